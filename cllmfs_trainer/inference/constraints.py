"""Constrained decoding: the model may only write the answer template, and between `<<<` and `>>>` only a contiguous
run of the input sentence's words.

The allowed answers are (see `cllmfs_trainer.data.format.build_completion`)::

    ANSWER_PREFIX ( " <<<" " RUN" " >>>" )* " <im_end>" EOS      (answer format `marked`, the paper's)
    ANSWER_PREFIX ( " RUN" " >>>" )* " <im_end>" EOS              (answer format `pointer`)

where RUN is one to `max_entity_words` consecutive words of the sentence, joined by single spaces. The constraint works
on token ids; `answer_pieces` reads each piece's tokens off the tokenizer and checks that answers tokenise as the
concatenation of their pieces.

Per sentence, the pieces form a token-level automaton (`cllmfs_trainer.inference.automaton`).

`EntityConstraintProcessor` runs one automaton per batch row inside `generate`: greedy or sampling (transformers 5
dropped its own constrained beam search; plain beam search with this processor works). Unlike
`prefix_allowed_tokens_fn`, it never leaves a row with nothing allowed: a finished row, or one that left the
automaton, may only write EOS or padding.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from cllmfs_trainer.data.format import ANSWER_FORMAT
from cllmfs_trainer.inference.answer_pieces import (  # noqa: F401 (some are re-exported: users import them here)
    DEFAULT_MAX_ENTITY_WORDS,
    RUN,
    CompletionTemplate,
    TokenizerMismatchError,
    candidate_runs,
    sentence_words,
    tokenize_and_cut,
)
from cllmfs_trainer.inference.automaton import (  # noqa: F401 (build_automata is re-exported: users import it here)
    EntityAutomaton,
    State,
    build_automata,
)

logger = logging.getLogger(__name__)


def mask_to_allowed(scores: torch.Tensor, allowed: Sequence[torch.Tensor]) -> torch.Tensor:
    """`scores` (rows, vocabulary) with -inf outside each row's `allowed` token ids (a new tensor).

    Vectorised: all rows' allowed ids become (row, column) index pairs, set in one indexed assignment.
    """
    counts = torch.tensor([ids.numel() for ids in allowed])
    rows = torch.repeat_interleave(torch.arange(len(allowed)), counts).to(scores.device)
    columns = torch.cat(list(allowed)).to(scores.device)
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    keep[rows, columns] = True
    return scores.masked_fill(~keep, float("-inf"))


def penalise_ending(
    scores: torch.Tensor, automata: Sequence[EntityAutomaton], states: Sequence[State], end_penalty: float
) -> torch.Tensor:
    """`scores` with `end_penalty` subtracted from each row's ending choice, where it has one (in place).

    On log-probabilities or logits alike, this asks for another entity wherever the model prefers ending by less than
    `end_penalty` nats: a decision threshold that trades precision for recall without retraining.
    """
    if not end_penalty:
        return scores
    marks = [(row, automaton.ending_choice(state)) for row, (automaton, state) in enumerate(zip(automata, states))]
    marks = [(row, token) for row, token in marks if token is not None]
    if marks:
        rows, tokens = zip(*marks)
        scores[list(rows), list(tokens)] -= end_penalty
    return scores


class EntityConstraintProcessor(LogitsProcessor):
    """Restricts generation to the answer template, with entity runs of each row's input sentence.

    Pass it to `generate` with left-padded prompts: `logits_processor=LogitsProcessorList([processor])`, greedy or
    sampling (plain beam search works too: its reordered rows are re-walked, see below). Each row follows its
    sentence's `EntityAutomaton`; after EOS (or a token the automaton did not allow, e.g. from a processor that ran
    after this one) only EOS and padding are allowed.

    State is kept per row between calls, so each step only consumes the new token. The generated ids seen in the
    previous call are compared with the current ones (one tensor comparison); a row whose history changed (a
    reordered batch, a new `generate` call) is re-walked from its start, so reusing the processor is safe.

    Args:
        tokenizer (`Any`):
            The model's fast tokenizer (offset mappings are needed).
        sentences (`Sequence[str | Sequence[str]]`):
            One per prompt: the sentence's tokens, or its text (tokens joined by single spaces). With
            `num_return_sequences` or `num_beams`, `generate` repeats each prompt; rows are mapped back to sentences.
        prompt_length (`int`):
            Width of the padded prompt batch: the generated tokens start at this column.
        max_entity_words (`int`, *optional*, defaults to `DEFAULT_MAX_ENTITY_WORDS`):
            Longest entity allowed, in words.
        eos_token_id (`int`, *optional*):
            The id that ends an answer; defaults to `tokenizer.eos_token_id`.
        pad_token_id (`int`, *optional*):
            Also allowed in finished rows; defaults to `tokenizer.pad_token_id`.
        cache (`MutableMapping[Any, EntityAutomaton]`, *optional*):
            A dict to share automata between processors (e.g. across batches) for one tokenizer.
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            The answer format the model was trained on: `marked` (` <<< X >>>`) or `pointer` (` X >>>`).
        end_penalty (`float`, *optional*, defaults to `0.0`):
            Subtracted from the score of ending the answer wherever another entity could start (`penalise_ending`).

    Raises:
        `TokenizerMismatchError`: the tokenizer does not tokenise answers as the concatenation of their pieces.
    """

    supports_continuous_batching = False

    def __init__(
        self,
        tokenizer: Any,
        sentences: Sequence[str | Sequence[str]],
        prompt_length: int,
        max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        cache: MutableMapping[Any, EntityAutomaton] | None = None,
        answer_format: str = ANSWER_FORMAT,
        end_penalty: float = 0.0,
    ) -> None:
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be non-negative, got {prompt_length}")
        if not sentences:
            raise ValueError("no sentences given")
        self.prompt_length = prompt_length
        self.automata = build_automata(
            tokenizer, sentences, max_entity_words, eos_token_id, pad_token_id, cache, answer_format
        )
        self.end_penalty = end_penalty
        self._states: list[State] = []
        self._seen: torch.Tensor | None = None  # generated ids at the previous call

    def allowed_token_ids(self, row: int, generated_ids: Sequence[int] | torch.Tensor) -> list[int]:
        """Token ids allowed after `generated_ids` for sentence `row` (stateless; for tests and inspection)."""
        if isinstance(generated_ids, torch.Tensor):
            generated_ids = generated_ids.tolist()
        automaton = self.automata[row]
        return list(automaton.allowed(automaton.walk(generated_ids)))

    def _row_automata(self, batch_size: int) -> list[EntityAutomaton]:
        copies, rest = divmod(batch_size, len(self.automata))
        if rest or not copies:
            raise ValueError(
                f"batch of {batch_size} rows for {len(self.automata)} sentences: expected a multiple "
                "(num_return_sequences and num_beams repeat each prompt)"
            )
        # `generate` expands prompts with repeat_interleave: row r belongs to prompt r // copies.
        return [self.automata[row // copies] for row in range(batch_size)]

    def _update_states(self, generated: torch.Tensor, automata: list[EntityAutomaton]) -> None:
        """Bring each row's state up to date with `generated` (batch, generated so far)."""
        seen = self._seen
        batch_size, length = generated.shape
        if seen is None or seen.shape[0] != batch_size or not seen.shape[1] <= length <= seen.shape[1] + 1:
            self._states = [automaton.walk(ids) for automaton, ids in zip(automata, generated.tolist())]
            return
        known = seen.shape[1]
        # One comparison and one transfer for the whole batch: does each row extend what we saw, and by which token?
        unchanged = (generated[:, :known] == seen).all(dim=1, keepdim=True).long()
        rows = torch.cat([unchanged, generated[:, known:]], dim=1).tolist()
        for row, (ok, *new_ids) in enumerate(rows):
            if ok:
                self._states[row] = automata[row].walk(new_ids, self._states[row])
            else:
                self._states[row] = automata[row].walk(generated[row].tolist())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Mask `scores` to -inf outside each row's allowed tokens.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                prompt and generated ids.
            scores (`torch.FloatTensor` of shape `(batch_size, vocab_size)`):
                next-token scores.

        Returns:
            `torch.FloatTensor`: the masked scores, of the same shape (a new tensor).
        """
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} columns, fewer than prompt_length={self.prompt_length}"
            )
        generated = input_ids[:, self.prompt_length :]
        automata = self._row_automata(input_ids.shape[0])
        self._update_states(generated, automata)
        self._seen = generated.clone()

        allowed = [automaton.allowed_tensor(state) for automaton, state in zip(automata, self._states)]
        vocab_size = scores.shape[-1]
        if max(automaton.max_token_id for automaton in automata) >= vocab_size:
            raise ValueError(f"the constraint allows token ids beyond the scores' vocabulary size {vocab_size}")
        return penalise_ending(mask_to_allowed(scores, allowed), automata, self._states, self.end_penalty)
