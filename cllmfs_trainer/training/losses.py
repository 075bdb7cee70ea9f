"""Pure-tensor pieces of the CLLMFS objective: the token-level contrastive loss, token subsampling and embedding noise.

Nothing here knows about models or trainers; every function takes and returns tensors.

The contrastive loss
--------------------
A supervised contrastive loss (Khosla et al., 2020) over token representations taken from one layer. Given M clean
token vectors h_1..h_M with labels y_1..y_M (0 = outside/O, >0 = entity-type id) and, optionally, a noised view
h~_1..h~_M of the same tokens (the labels are duplicated for it), let Z be the 2M L2-normalised vectors (just the M
clean ones when there is no noised view) and s_ij = z_i . z_j / temperature. Then:

- Anchors are the vectors with y > 0 (also those with y = 0 when `anchor_outside=True`).
- For an anchor i the positives are P(i) = {j != i : y_j = y_i}; in particular a token's own noised view is a
  positive. Negatives are the j with y_j != y_i (other types and O). The denominator runs over every j != i:

      loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )
             = logsumexp_{a != i}(s_ia) - mean_{p in P(i)}(s_ip)

- An anchor contributes only if it has at least one positive and at least one negative; the loss is the mean of
  loss_i over contributing anchors. With none (no entity token, a single class, M < 2, ...) the loss is a zero that
  is still attached to the graph, so `backward()` works and nothing turns NaN.

Embedding noise
---------------
`add_noise` follows NEFTune (Jain et al., 2023): uniform noise in [-1, 1] scaled by alpha / sqrt(L * d), with L the
number of real tokens of each sequence and d the hidden size; a Gaussian variant is available too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NOISE_DISTRIBUTIONS = ("uniform", "gaussian")


@dataclass
class ContrastiveOutput:
    """Result of `supervised_contrastive_loss`.

    Args:
        loss (`torch.Tensor`):
            Scalar, differentiable. Exactly 0.0 (still attached to the graph) when no anchor contributes.
        num_anchors (`int`):
            Number of anchors that contributed to the loss.
        pos_sim (`torch.Tensor`):
            Mean cosine similarity over the (anchor, positive) pairs used; detached scalar, NaN if none.
        neg_sim (`torch.Tensor`):
            Mean cosine similarity over the (anchor, negative) pairs used; detached scalar, NaN if none.
    """

    loss: torch.Tensor
    num_anchors: int
    pos_sim: torch.Tensor
    neg_sim: torch.Tensor


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    noised: torch.Tensor | None = None,
    temperature: float = 0.07,
    anchor_outside: bool = False,
) -> ContrastiveOutput:
    """Supervised contrastive loss over token representations (see the module docstring for the definition).

    Args:
        features (`torch.Tensor`):
            `[M, D]` clean-view token representations, any floating dtype.
        labels (`torch.Tensor`):
            `[M]` integer labels: 0 for outside (O) tokens, >0 for entity-type ids. Ignored tokens (e.g. -100) must be
            filtered out by the caller.
        noised (`torch.Tensor`, *optional*):
            `[M, D]` noised view of the same M tokens, or None for no second view. Gradients flow into it; detach it
            beforehand for no-grad positives.
        temperature (`float`, *optional*, defaults to `0.07`):
            Softmax temperature, > 0.
        anchor_outside (`bool`, *optional*, defaults to `False`):
            Also use O tokens (label 0) as anchors.

    Returns:
        `ContrastiveOutput`: the loss is computed in float32 (float64 inputs stay float64).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [M, D], got shape {tuple(features.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [M] = [{features.shape[0]}], got shape {tuple(labels.shape)}")
    if noised is not None and noised.shape != features.shape:
        raise ValueError(f"noised must match features {tuple(features.shape)}, got {tuple(noised.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.numel() and bool((labels < 0).any()):
        raise ValueError("labels must be >= 0; filter out ignored tokens (e.g. -100) first")

    # bf16/fp16 similarities divided by a small temperature lose too much precision; float64 is kept for tests.
    dtype = torch.promote_types(features.dtype, torch.float32)
    views = [features] if noised is None else [features, noised]
    z = F.normalize(torch.cat([v.to(dtype) for v in views]), dim=-1)  # [N, D], N = M or 2M
    y = labels.repeat(len(views))  # [N]

    # Everything below only needs the anchor rows, so the masks are [A, N] rather than [N, N].
    anchor_idx = torch.arange(len(y), device=y.device) if anchor_outside else (y > 0).nonzero().squeeze(1)
    is_self = anchor_idx[:, None] == torch.arange(len(y), device=y.device)[None, :]
    same = y[anchor_idx, None] == y[None, :]
    pos_mask = same & ~is_self
    neg_mask = ~same
    keep = pos_mask.any(1) & neg_mask.any(1)
    anchor_idx, is_self, pos_mask, neg_mask = anchor_idx[keep], is_self[keep], pos_mask[keep], neg_mask[keep]

    num_anchors = len(anchor_idx)
    if num_anchors == 0:
        # A zero built from the inputs keeps backward() working (zero grads) for steps without usable anchors.
        loss = sum(v.to(dtype).sum() for v in views) * 0.0
        nan = torch.full((), math.nan, dtype=dtype, device=features.device)
        return ContrastiveOutput(loss=loss, num_anchors=0, pos_sim=nan, neg_sim=nan.clone())

    cos = z[anchor_idx] @ z.T  # [A, N]
    sim = cos / temperature
    # A large finite negative (not -inf) keeps logsumexp and its gradient free of inf - inf.
    log_denom = torch.logsumexp(sim.masked_fill(is_self, torch.finfo(dtype).min), dim=1)
    num_pos = pos_mask.sum(1)
    mean_pos = (sim * pos_mask).sum(1) / num_pos
    loss = (log_denom - mean_pos).mean()

    with torch.no_grad():
        pos_sim = cos[pos_mask].mean()
        neg_sim = cos[neg_mask].mean()
    return ContrastiveOutput(loss=loss, num_anchors=num_anchors, pos_sim=pos_sim, neg_sim=neg_sim)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`torch.randperm` drawn on the generator's device (so a CPU generator is deterministic for any data), then
    moved to `device`."""
    rng_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=rng_device).to(device)


def select_tokens(
    labels: torch.Tensor, max_tokens: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of the tokens to keep for the contrastive loss, at most `max_tokens` of them.

    The loss is quadratic in the number of tokens, so long batches are capped. Entity tokens carry the signal, so O
    tokens are dropped first (a random subset of them fills what is left of the budget); entity tokens are
    subsampled, uniformly at random, only when they alone exceed the budget.

    Args:
        labels (`torch.Tensor`):
            `[N]` labels, already filtered to >= 0 (0 = O, >0 = entity type).
        max_tokens (`int` or `None`):
            The budget, >= 0, or None for no limit.
        generator (`torch.Generator`, *optional*):
            Random generator; the selection is deterministic given its state.

    Returns:
        `torch.Tensor`: a sorted LongTensor of indices into `labels`, of length `min(N, max_tokens)`.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N], got shape {tuple(labels.shape)}")
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0 or None, got {max_tokens}")
    n = len(labels)
    if max_tokens is None or n <= max_tokens:
        return torch.arange(n, device=labels.device)

    entity = (labels > 0).nonzero().squeeze(1)
    if len(entity) >= max_tokens:
        keep = entity[_randperm(len(entity), generator, labels.device)[:max_tokens]]
    else:
        outside = (labels == 0).nonzero().squeeze(1)
        fill = outside[_randperm(len(outside), generator, labels.device)[: max_tokens - len(entity)]]
        keep = torch.cat([entity, fill])
    return keep.sort().values


def neftune_scale(lengths: torch.Tensor, hidden_size: int, alpha: float) -> torch.Tensor:
    """Per-sequence NEFTune noise scale `alpha / sqrt(L * d)`.

    Args:
        lengths (`torch.Tensor`):
            `[B]` number of real (attention_mask = 1) tokens of each sequence.
        hidden_size (`int`):
            d, the size of the vectors the noise is added to.
        alpha (`float`):
            Noise strength, >= 0.

    Returns:
        `torch.Tensor`: a float32 tensor of shape `[B, 1, 1]`, ready to broadcast over `[B, T, D]`. Lengths below 1
        count as 1, so an all-padding row gets a finite scale (its noise is masked out anyway; inf * 0 would be NaN).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    lengths = lengths.to(torch.float32).clamp_min(1.0)
    return (alpha / torch.sqrt(lengths * hidden_size)).view(-1, 1, 1)


def add_noise(
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    alpha: float,
    distribution: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add NEFTune-style noise to embeddings or hidden states.

    Args:
        x (`torch.Tensor`):
            `[B, T, D]` input embeddings or hidden states.
        attention_mask (`torch.Tensor` or `None`):
            `[B, T]`, 1 for real tokens and 0 for padding (which gets no noise); None means all real.
        alpha (`float`):
            Noise strength, >= 0; 0 returns `x` itself.
        distribution (`str`, *optional*, defaults to `"uniform"`):
            "uniform" for U(-1, 1) * scale (NEFTune, Jain et al. 2023) or "gaussian" for N(0, 1) * scale, with scale =
            `neftune_scale(real lengths, D, alpha)`.
        generator (`torch.Generator`, *optional*):
            Random generator; the noise is drawn on its device (then moved to `x`'s) for reproducibility.

    Returns:
        `torch.Tensor`: `x + noise`, with the dtype and device of `x`. The noise is drawn in float32 and cast.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D], got shape {tuple(x.shape)}")
    if distribution not in NOISE_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {NOISE_DISTRIBUTIONS}, got {distribution!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return x

    batch, length, hidden = x.shape
    if attention_mask is None:
        mask = torch.ones(batch, length, dtype=torch.float32, device=x.device)
    else:
        if attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask must be [B, T] = {[batch, length]}, got {tuple(attention_mask.shape)}")
        mask = attention_mask.to(device=x.device, dtype=torch.float32)

    rng_device = generator.device if generator is not None else x.device
    if distribution == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=rng_device, dtype=torch.float32) * 2 - 1
    else:
        noise = torch.randn(x.shape, generator=generator, device=rng_device, dtype=torch.float32)
    noise = noise.to(x.device) * neftune_scale(mask.sum(1), hidden, alpha) * mask[..., None]
    return x + noise.to(x.dtype)
