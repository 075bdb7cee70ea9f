"""Constrained greedy decoding in our own loop: finished rows leave the batch, and forced endings cost no model call.

`generate` keeps every row of a batch until the longest answer ends. Most answers are short (a type that does not
occur in a sentence gets ` <im_end>` straight after the answer prefix), so in a batch of 32 most rows are finished
padding long before the batch is. On a CPU, where a decoding step's cost grows with its rows, that waste was more
than half of all decoding (`bench/inference.py`, trained CoNLL'03 adapter: 1,888 decoded rows for about 720
answer tokens). This loop drops a row from the batch (and from its key/value cache) as soon as it is finished.

It also skips the model where the constraint leaves no choice. Once an answer has chosen to end (its next tokens can
only spell the rest of ` <im_end>` and then EOS), greedy decoding under the constraint must write exactly those
tokens: every other token's score is -inf. So the loop appends them and finishes the row without further steps.

The tokens chosen are the ones `generate` with `EntityConstraintProcessor` chooses (greedy argmax over the same
masked scores), up to the floating-point noise of batches of other shapes that `answers.py` describes;
`tests/test_generate.py` checks equality with per-prompt `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cllmfs_trainer.inference.automaton import EntityAutomaton
from cllmfs_trainer.inference.constraints import mask_to_allowed, penalise_ending
from cllmfs_trainer.inference.prefix_cache import cache_argument, last_logits_only

_GREEDY_DEFAULTS = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "min_new_tokens": None,
    "min_length": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "guidance_scale": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
}


def is_plain_greedy(generation_kwargs: dict[str, Any], model: Any) -> bool:
    """Whether `generate(**generation_kwargs)` on `model` is plain greedy search, which `constrained_greedy` equals.

    Any keyword besides `do_sample=False` (sampling, beams, penalties) needs `generate`. The model's own generation
    config counts too: a repetition penalty set there would change `generate`'s choices.
    """
    if generation_kwargs.get("do_sample", False) or set(generation_kwargs) - {"do_sample"}:
        return False
    config = getattr(model, "generation_config", None)
    return config is None or all(
        getattr(config, key, value) in (value, None) for key, value in _GREEDY_DEFAULTS.items()
    )


@torch.no_grad()
def constrained_greedy(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    automata: Sequence[EntityAutomaton],
    max_new_tokens: int,
    cache: Any = None,
    written: Sequence[int] = (),
    end_penalty: float = 0.0,
    first_odds: list[dict[int, float]] | None = None,
    token_logprobs: list[list[float]] | None = None,
) -> list[list[int]]:
    """Greedy decoding under per-row answer automata; returns each row's generated token ids (EOS included).

    Args:
        input_ids (`torch.Tensor`):
            `(rows, width)` left-padded prompts; a given `cache` already holds their first columns.
        attention_mask (`torch.Tensor`):
            `(rows, width)`, 0 on padding and gaps; positions follow its cumulative sum, as in `generate`.
        automata (`Sequence[EntityAutomaton]`):
            One per row: the answers each row may write.
        max_new_tokens (`int`):
            Bound on generated tokens per row (forced endings included), as `generate`'s.
        cache (`Any`, *optional*):
            A `DynamicCache` holding a prefix of every row (e.g. from `SharedPrefixes`), or None.
        written (`Sequence[int]`, *optional*, defaults to `()`):
            Answer tokens already at the end of every prompt (a prefilled answer prefix): the automata start after them,
            and they are not part of the returned ids or of `max_new_tokens`.
        end_penalty (`float`, *optional*, defaults to `0.0`):
            Subtracted from the score of ending wherever another entity could start (`penalise_ending`).
        first_odds (`list[dict[int, float]]`, *optional*):
            If given, filled with one dict per row: each token allowed at the first generated step, mapped to its
            log-probability minus that of the token that ends the answer there, before any penalty (under pointer
            answers, the log-odds of naming the run that starts with it rather than none; `resolve_types`).
    """
    from transformers import DynamicCache

    device = input_ids.device
    rows = input_ids.shape[0]
    cache = DynamicCache(config=model.config) if cache is None else cache
    argument = cache_argument(model)
    # Only the last position's scores are needed: skip the vocabulary-wide logits of the prompt where allowed.
    extra = last_logits_only(model)
    cached = cache.get_seq_length()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    states = [automaton.walk(written) for automaton in automata]
    generated: list[list[int]] = [[] for _ in range(rows)]
    if token_logprobs is not None:
        token_logprobs.extend([] for _ in range(rows))
    active = list(range(rows))  # original row of each batch row
    new_ids, mask, step_positions = input_ids[:, cached:], attention_mask, positions[:, cached:]
    while active and max_new_tokens > 0:
        logits = model(
            input_ids=new_ids,
            attention_mask=mask,
            position_ids=step_positions,
            use_cache=True,
            **extra,
            **{argument: cache},
        ).logits[:, -1]
        allowed = [automata[row].allowed_tensor(states[row]) for row in active]
        if first_odds is not None and not generated[active[0]]:  # the first step: every row is still active
            first_odds.extend(_log_odds(logits, automata, states, allowed))
        scores = mask_to_allowed(logits, allowed)
        if end_penalty:  # the default 0 costs nothing per step
            rows_automata, rows_states = [automata[row] for row in active], [states[row] for row in active]
            scores = penalise_ending(scores, rows_automata, rows_states, end_penalty)
        choices = scores.argmax(dim=-1).tolist()
        chosen_logprobs = None if token_logprobs is None else _constrained_logprobs(logits, allowed, choices)
        keep = []
        for index, (row, token) in enumerate(zip(active, choices)):
            automaton = automata[row]
            generated[row].append(token)
            states[row] = automaton.step(states[row], token)
            ending = automaton.forced_ending(states[row])
            if chosen_logprobs is not None:
                token_logprobs[row].append(chosen_logprobs[index])
            if ending is not None:  # finished, or nothing left to choose: write the rest without the model
                written_ending = ending[: max(max_new_tokens - len(generated[row]), 0)]
                generated[row].extend(written_ending)
                if token_logprobs is not None:  # forced: probability 1 under the constraint
                    token_logprobs[row].extend([0.0] * len(written_ending))
            elif len(generated[row]) < max_new_tokens:
                keep.append(index)
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from everything that has a batch dimension
            selected = torch.tensor(keep, device=device)
            cache.batch_select_indices(selected)
            mask, step_positions = mask[selected], step_positions[selected]
            active = [active[index] for index in keep]
            choices = [choices[index] for index in keep]
        new_ids = torch.tensor(choices, device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        step_positions = step_positions[:, -1:] + 1
    return generated


def _constrained_logprobs(logits: torch.Tensor, allowed: Sequence[torch.Tensor], choices: Sequence[int]) -> list[float]:
    """Per row: the chosen token's log-probability among the row's allowed tokens, from the unpenalised logits.

    The normaliser is a log-sum-exp over the allowed entries alone (a few dozen per row), gathered in one indexed
    read, rather than over the vocabulary: on SmolLM2's 49k tokens and 32 rows that is a tenth of a millisecond per
    step instead of several.
    """
    device = logits.device
    counts = torch.tensor([ids.numel() for ids in allowed])
    rows = torch.repeat_interleave(torch.arange(len(allowed)), counts).to(device)
    values = logits[rows, torch.cat(list(allowed)).to(device)].float()
    peak = torch.full((len(allowed),), float("-inf"), device=device).scatter_reduce(0, rows, values, "amax")
    total = torch.zeros(len(allowed), device=device).index_add(0, rows, (values - peak[rows]).exp())
    chosen = logits[torch.arange(len(allowed), device=device), torch.tensor(choices, device=device)].float()
    return (chosen - peak - total.log()).tolist()


def _log_odds(
    logits: torch.Tensor, automata: Sequence[EntityAutomaton], states: Sequence, allowed: Sequence[torch.Tensor]
) -> list[dict[int, float]]:
    """Per row: each allowed token's log-probability minus the ending choice's (empty where the row cannot end)."""
    logprobs = logits.float().log_softmax(dim=-1)
    odds = []
    for row, (automaton, state, ids) in enumerate(zip(automata, states, allowed)):
        ending = automaton.ending_choice(state)
        if ending is None:
            odds.append({})
            continue
        values = (logprobs[row, ids] - logprobs[row, ending]).tolist()
        odds.append(dict(zip(ids.tolist(), values)))
    return odds
