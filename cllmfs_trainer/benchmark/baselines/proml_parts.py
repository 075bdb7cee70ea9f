"""ProML's two prompts and its loss (Chen et al., Findings of ACL 2023; see `proml` for the method).

- The option prompt lists the task's type names before the sentence; every word of the sentence is read with it.
- The label-aware prompt marks a support sentence's entities in place with their type names.
- The loss is NCA over the symmetric KL divergence between query and support words' Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cllmfs_trainer.benchmark.baselines.gaussian_metric import symmetric_kl
from cllmfs_trainer.data.io import Span

if TYPE_CHECKING:
    import torch


def option_prompt(names: Sequence[str]) -> list[str]:
    """The option prefix as words: `person , location :` for the names `["person", "location"]`."""
    words: list[str] = []
    for i, name in enumerate(names):
        words.extend([","] * bool(i) + name.split())
    return [*words, ":"]


def label_aware_prompt(
    words: Sequence[str], spans: Sequence[Span], names: dict[str, str]
) -> tuple[list[str], list[int]]:
    """The sentence with each span written `[ words | name ]`, and where the sentence's words are in it.

    Args:
        words (`Sequence[str]`):
            The sentence's words.
        spans (`Sequence[Span]`):
            Its entities (types present in `names`; others are ignored).
        names (`dict[str, str]`):
            Type label -> natural-language name.
    """
    opens = {s.start for s in spans if s.type in names}
    closes = {s.end - 1: names[s.type] for s in spans if s.type in names}
    out, kept = [], []
    for i, word in enumerate(words):
        if i in opens:
            out.append("[")
        kept.append(len(out))
        out.append(word)
        if i in closes:
            out.extend(["|", *closes[i].split(), "]"])
    return out, kept


def proml_loss(
    query_mu: torch.Tensor,
    query_var: torch.Tensor,
    query_labels: torch.Tensor,
    support_mu: torch.Tensor,
    support_var: torch.Tensor,
    support_labels: torch.Tensor,
    exclude_self: bool = False,
) -> torch.Tensor:
    """ProML's NCA loss between query and support words' Gaussians (see the module docstring).

    Args:
        query_mu (`torch.Tensor`):
            `(n, dim)`.
        query_var (`torch.Tensor`):
            `(n, dim)`.
        query_labels (`torch.Tensor`):
            `(n,)` label ids.
        support_mu (`torch.Tensor`):
            `(m, dim)`.
        support_var (`torch.Tensor`):
            `(m, dim)`.
        support_labels (`torch.Tensor`):
            `(m,)` label ids.
        exclude_self (`bool`, *optional*, defaults to `False`):
            The query is the support (same words, same order): a word is not its own neighbour.

    Returns:
        `torch.Tensor`: a scalar, the mean over query words with at least one support word of their label; 0 (attached
        to the graph) if there is none.
    """
    import torch

    logits = -2 * symmetric_kl(query_mu, query_var, support_mu, support_var)  # KL(q||s) + KL(s||q)
    same = query_labels.unsqueeze(1) == support_labels.unsqueeze(0)
    if exclude_self:
        eye = torch.eye(len(query_labels), len(support_labels), dtype=torch.bool, device=logits.device)
        logits, same = logits.masked_fill(eye, -math.inf), same & ~eye
    valid = same.any(1)
    if not valid.any():
        return logits.masked_fill(torch.isinf(logits), 0).sum() * 0.0
    # Rows without a positive are dropped before the log-sum-exp: theirs would be -inf, with NaN gradients.
    logits, same = logits[valid], same[valid]
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)).mean()
