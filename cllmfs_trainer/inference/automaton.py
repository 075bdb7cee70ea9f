"""The token-level automaton of one sentence's allowed answers (see `cllmfs_trainer.inference.constraints`).

Per sentence, the pieces form a token-level automaton (`EntityAutomaton`): a chain for the prefix, then a token trie
rooted at the "between groups" state holding every ` <<< RUN >>>` and the ` <im_end>` EOS ending. A state is a set of
trie nodes, because a run can itself end in text that looks like ` >>>` (a tweet may contain the word `>>>`): after
such a run the model may either continue the longer run or close, and both stay open until the tokens decide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import torch

from cllmfs_trainer.data.format import ANSWER_FORMAT, build_completion
from cllmfs_trainer.inference.answer_pieces import (
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
