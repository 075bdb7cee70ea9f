"""Constrained decoding: the model may only write the answer template, and between `<<<` and `>>>` only a contiguous
run of the input sentence's words.

The allowed answers are (see `cllmfs_trainer.data.format.build_completion`)::

    ANSWER_PREFIX ( " <<<" " RUN" " >>>" )* " <im_end>" EOS      (answer format `marked`, the paper's)
    ANSWER_PREFIX ( " RUN" " >>>" )* " <im_end>" EOS              (answer format `pointer`)

where RUN is one to `max_entity_words` consecutive words of the sentence, joined by single spaces. The constraint works
on token ids; `answer_pieces` reads each piece's tokens off the tokenizer and checks that answers tokenise as the
concatenation of their pieces.

Per sentence, the pieces form a token-level automaton (`EntityAutomaton`): a chain for the prefix, then a token trie
rooted at the "between groups" state holding every ` <<< RUN >>>` and the ` <im_end>` EOS ending. A state is a set of
trie nodes, because a run can itself end in text that looks like ` >>>` (a tweet may contain the word `>>>`): after
such a run the model may either continue the longer run or close, and both stay open until the tokens decide.

`EntityConstraintProcessor` runs one automaton per batch row inside `generate`: greedy or sampling (transformers 5
dropped its own constrained beam search; plain beam search with this processor works). Unlike
`prefix_allowed_tokens_fn`, it never leaves a row with nothing allowed: a finished row, or one that left the
automaton, may only write EOS or padding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from cllmfs_trainer.data.format import ANSWER_FORMAT, build_completion
from cllmfs_trainer.inference.answer_pieces import (  # noqa: F401 (some are re-exported: users import them here)
    DEFAULT_MAX_ENTITY_WORDS,
    RUN,
    CompletionTemplate,
    TokenizerMismatchError,
    candidate_runs,
    sentence_words,
    tokenize_and_cut,
)

logger = logging.getLogger(__name__)

State = frozenset[int]
_DEAD: State = frozenset()  # left the automaton (a token it did not allow was fed): only EOS or padding from here


class EntityAutomaton:
    """Token-level automaton of the answers allowed for one sentence.

    States are frozensets of node ids (usually one node); `start` is the state before the first generated token.
    Use `EntityAutomaton.build` to make one from a tokenizer.

    Args:
        template (`CompletionTemplate`):
            Token ids of the fixed pieces.
        runs (`Mapping[str, tuple[int, ...]]`):
            Token ids of each allowed entity run (without the space-led markers around it).
        eos_token_id (`int`):
            The id that ends an answer (training appends it after ` <im_end>`).
        pad_token_id (`int`, *optional*):
            Also allowed once the answer is finished (`generate` pads finished rows with it).
    """

    def __init__(
        self,
        template: CompletionTemplate,
        runs: Mapping[str, tuple[int, ...]],
        eos_token_id: int,
        pad_token_id: int | None = None,
    ) -> None:
        self.template = template
        self.runs = dict(runs)
        self.eos_token_id = eos_token_id
        self.stop_ids = tuple(sorted({eos_token_id} | ({pad_token_id} if pad_token_id is not None else set())))
        self._children: list[dict[int, int]] = []
        self._loops: set[int] = set()  # nodes that close a group: reaching one also re-enters the choice node
        start = self._new_node()
        self._choice = self._new_node()  # between groups: ` <<<` or ` <im_end>` may follow
        node = start
        for position, token_id in enumerate(template.prefix):
            target = self._choice if position == len(template.prefix) - 1 else self._new_node()
            self._children[node][token_id] = target
            node = target
        for run_ids in self.runs.values():
            self._loops.add(self._insert(template.open + run_ids + template.close))
        self._done = self._insert(template.end + (eos_token_id,))
        self._end_branch = self._find_end_branch(template.end + (eos_token_id,))
        self.start: State = frozenset({start if template.prefix else self._choice})
        self.done: State = frozenset({self._done})
        self.max_token_id = max(
            (token_id for children in self._children for token_id in children), default=eos_token_id
        )
        self.max_token_id = max(self.max_token_id, *self.stop_ids)
        self._allowed_cache: dict[State, torch.Tensor] = {}
        self._forced_cache: dict[State, tuple[int, ...] | None] = {}

    @classmethod
    def build(
        cls,
        tokenizer: Any,
        sentence: str | Sequence[str],
        template: CompletionTemplate | None = None,
        max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        answer_format: str = ANSWER_FORMAT,
    ) -> EntityAutomaton:
        """Tokenise the sentence's candidate runs in context and build the automaton.

        All candidate completions `build_completion([run])`, plus one with every word as its own group (which checks
        the runs' tokens after ` >>>` as well as after the prefix), are tokenised in one batched call and cut into
        pieces; every fixed piece must match `template` and every group in the multi-group completion must match its
        run's tokens.

        Args:
            tokenizer (`Any`):
                A fast tokenizer (offset mappings are needed).
            sentence (`str` or `Sequence[str]`):
                The sentence's tokens, or its text (tokens joined by single spaces).
            template (`CompletionTemplate`, *optional*):
                The fixed pieces; computed from `tokenizer` and `answer_format` if not given.
            max_entity_words (`int`, *optional*, defaults to `DEFAULT_MAX_ENTITY_WORDS`):
                Longest run allowed, in words.
            eos_token_id (`int`, *optional*):
                Defaults to `tokenizer.eos_token_id`.
            pad_token_id (`int`, *optional*):
                Defaults to `tokenizer.pad_token_id`.
            answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
                `marked` or `pointer`; a given `template` brings its own.

        Raises:
            `TokenizerMismatchError`: the tokenizer merges tokens across pieces or tokenises a piece differently in
                another context.
        """
        if max_entity_words < 1:
            raise ValueError(f"max_entity_words must be at least 1, got {max_entity_words}")
        eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no EOS token: answers could not end")
        pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        template = CompletionTemplate.from_tokenizer(tokenizer, answer_format) if template is None else template
        words = sentence_words(sentence)
        runs = candidate_runs(words, max_entity_words)
        entity_lists = [[run] for run in runs] + ([words] if len(words) > 1 else [])
        run_ids: dict[str, tuple[int, ...]] = {}
        for (pieces, piece_ids), entities in zip(tokenize_and_cut(tokenizer, entity_lists, template), entity_lists):
            template.check(tokenizer, pieces, piece_ids)
            for piece, ids in zip(pieces, piece_ids):
                if piece.kind != RUN:
                    continue
                known = run_ids.setdefault(piece.text[1:], ids)
                if known != ids:
                    raise TokenizerMismatchError(
                        f"{type(tokenizer).__name__} tokenises {piece.describe()} differently after ' >>>' than after "
                        f"the answer prefix: {tokenizer.convert_ids_to_tokens(list(ids))} vs "
                        f"{tokenizer.convert_ids_to_tokens(list(known))} in "
                        f"{build_completion(entities, template.answer_format)!r}"
                    )
        # A run whose text tokenises to the EOS id (a literal '</s>' in the sentence) would end generation mid-group.
        unusable = [run for run, ids in run_ids.items() if eos_token_id in ids]
        if unusable:
            logger.warning(
                "%d runs contain the EOS token's text and cannot be generated, e.g. %r", len(unusable), unusable[0]
            )
        return cls(
            template,
            {run: ids for run, ids in run_ids.items() if eos_token_id not in ids},
            eos_token_id,
            pad_token_id,
        )

    def _new_node(self) -> int:
        self._children.append({})
        return len(self._children) - 1

    def _insert(self, token_ids: Iterable[int]) -> int:
        node = self._choice
        for token_id in token_ids:
            child = self._children[node].get(token_id)
            if child is None:
                child = self._children[node][token_id] = self._new_node()
            node = child
        return node

    def _find_end_branch(self, ending: tuple[int, ...]) -> tuple[int, int] | None:
        """`(node, token)` where the ending's path first leaves the others: choosing `token` there ends the answer.

        In the `marked` format ` <<<` and ` <im_end>` may share their first token, so the choice between another
        entity and the end is made at a later token; None when nothing but the ending can follow the prefix.
        """
        node = self._choice
        for token_id in ending:
            if len(self._children[node]) > 1:
                return node, token_id
            node = self._children[node][token_id]
        return None

    def ending_choice(self, state: State) -> int | None:
        """The token that chooses to end the answer in `state`, where another entity could be chosen instead."""
        if self._end_branch is None or self._end_branch[0] not in state:
            return None
        return self._end_branch[1]

    def is_done(self, state: State) -> bool:
        """Whether the answer is complete (EOS written)."""
        return self._done in state

    def step(self, state: State, token_id: int) -> State:
        """The state after writing `token_id`; `frozenset()` if the token was not allowed."""
        if self._done in state:
            return self.done
        if not state:
            return self.done if token_id == self.eos_token_id else _DEAD
        nodes = set()
        for node in state:
            child = self._children[node].get(token_id)
            if child is not None:
                nodes.add(child)
                if child in self._loops:
                    nodes.add(self._choice)
        return frozenset(nodes)

    def walk(self, token_ids: Iterable[int], state: State | None = None) -> State:
        """The state after writing `token_ids`, from `state` (default: `start`)."""
        state = self.start if state is None else state
        for token_id in token_ids:
            state = self.step(state, token_id)
        return state

    def allowed(self, state: State) -> tuple[int, ...]:
        """Sorted token ids allowed next; never empty (EOS and padding when nothing else is)."""
        if self._done in state:
            return self.stop_ids
        allowed = set()
        for node in state:
            allowed.update(self._children[node])
        return tuple(sorted(allowed)) if allowed else self.stop_ids

    def forced_ending(self, state: State) -> tuple[int, ...] | None:
        """The tokens that must follow `state` when only one token is allowed at every step up to the end of the
        answer (EOS included; `()` when it has ended), or None when a choice remains.

        Once an answer has started its ` <im_end>` ending, the rest is forced: greedy decoding under the
        constraint writes exactly these tokens whatever the scores, so they need no model call.
        """
        if state in self._forced_cache:
            return self._forced_cache[state]
        tokens: list[int] = []
        current = state
        while not self.is_done(current):
            allowed = self.allowed(current)
            if len(allowed) != 1:
                tokens = None
                break
            tokens.append(allowed[0])
            current = self.step(current, allowed[0])
        ending = None if tokens is None else tuple(tokens)
        self._forced_cache[state] = ending
        return ending

    def allowed_tensor(self, state: State) -> torch.Tensor:
        """`allowed(state)` as a cached CPU `LongTensor` (states recur across rows and steps)."""
        tensor = self._allowed_cache.get(state)
        if tensor is None:
            tensor = self._allowed_cache[state] = torch.tensor(self.allowed(state), dtype=torch.long)
        return tensor


def build_automata(
    tokenizer: Any,
    sentences: Sequence[str | Sequence[str]],
    max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    cache: MutableMapping[Any, EntityAutomaton] | None = None,
    answer_format: str = ANSWER_FORMAT,
) -> list[EntityAutomaton]:
    """One `EntityAutomaton` per sentence (arguments as `EntityConstraintProcessor`'s), shared through `cache`."""
    eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    cache = {} if cache is None else cache
    template = None
    automata = []
    for sentence in sentences:
        words = tuple(sentence_words(sentence))
        # Each sentence is asked once per entity type, so duplicates within a batch are the rule.
        key = (words, max_entity_words, eos_token_id, pad_token_id, answer_format)
        automaton = cache.get(key)
        if automaton is None:
            template = CompletionTemplate.from_tokenizer(tokenizer, answer_format) if template is None else template
            automaton = cache[key] = EntityAutomaton.build(
                tokenizer, words, template, max_entity_words, eos_token_id, pad_token_id
            )
        automata.append(automaton)
    return automata


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
