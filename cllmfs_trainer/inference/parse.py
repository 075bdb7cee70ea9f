"""Turning generated answers back into entity spans.

The model is trained to answer (see `cllmfs_trainer.data.sft.build_completion`)::

    <im_start> I can extract entities for you, the extracted entities are <<< Andrew Little >>> <<< Bo >>> <im_end>

and, with no entity of the queried type, the same sentence with no `<<< >>>` group. At prediction time the answer is
decoded with `skip_special_tokens=True`, so it may start with whitespace, may be cut before `<im_end>` by
`max_new_tokens`, and an unconstrained or badly trained model may write anything. `parse_output` never raises; it
returns what it could read plus the kinds of problems it met, so that a run can report how often the model strays.

Parsing policy:

- Everything after the first `<im_end>` is ignored. A missing `<im_end>` is the problem `no_end`; complete groups
  before the cut still count.
- The answer prefix is matched with any whitespace between its words. Missing, it is the problem `no_prefix`, and
  the whole answer is still read for groups. Text before a prefix found later in the answer is
  `text_outside_markers`.
- A complete `<<< X >>>` group yields X with its whitespace normalised (split, joined by single spaces). An empty X
  yields nothing and is the problem `empty_entity`.
- A `<<<` without a matching `>>>` yields nothing and is the problem `unbalanced`; so is a `>>>` that closes no group.
  A second `<<<` before the first is closed abandons the first group (the `>>>` belongs to the nearer `<<<`).
- Any other non-whitespace text outside the groups is `text_outside_markers`; the groups still count.
- When the answer was cut (no `<im_end>`), a trailing fragment of a marker (`<im_`, `<<`, or a prefix cut mid-way)
  is what the cut left behind, not extra text: it adds nothing beyond `no_end` (and `no_prefix` for a cut prefix).

In the `pointer` answer format (` X >>>`, no opening marker) every stretch of text that a `>>>` closes is an entity;
text left before `<im_end>` without its `>>>` yields nothing and is `unbalanced` (when the answer was cut, a trailing
fragment of `<im_end>` adds nothing beyond `no_end`, and an unclosed entity is `unbalanced` as above).

Markers are found as substrings, so `<<<Bo>>>` without spaces still reads as `Bo`. The price: an entity whose own text
contains `<<<`, `>>>` or `<im_end>` cannot be read back (no such token occurs in the shipped WNUT'17 data).

`entities_to_spans` then maps the entity strings onto the sentence's tokens, and `resolve_overlaps` merges the
per-type predictions of a sentence into one non-overlapping set for BIO export.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cllmfs_trainer.data.io import Span
from cllmfs_trainer.data.sft import ANSWER_FORMAT, ANSWER_PREFIX, CLOSE, IM_END, OPEN, check_answer_format

# Problem kinds, in the order `ParsedOutput.problems` lists them.
NO_PREFIX, NO_END, UNBALANCED, EMPTY_ENTITY, TEXT_OUTSIDE = (
    "no_prefix",
    "no_end",
    "unbalanced",
    "empty_entity",
    "text_outside_markers",
)
PROBLEM_KINDS = (NO_PREFIX, NO_END, UNBALANCED, EMPTY_ENTITY, TEXT_OUTSIDE)

# Tokenizers may decode the prefix with other whitespace (a newline, two spaces); its words are what matter.
_PREFIX_RE = re.compile(r"\s+".join(re.escape(word) for word in ANSWER_PREFIX.split()))
_MARKER_RE = re.compile(f"({re.escape(OPEN)}|{re.escape(CLOSE)})")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _is_cut_marker(fragment: str, marker: str) -> bool:
    """Whether `fragment` is a non-empty proper beginning of `marker` (up to whitespace): a marker cut by the limit."""
    fragment, marker = _normalise(fragment), _normalise(marker)
    return bool(fragment) and fragment != marker and marker.startswith(fragment)


@dataclass
class ParsedOutput:
    """What `parse_output` read from one generated answer.

    Args:
        entities (`list[str]`, *optional*, defaults to `[]`):
            Entity strings in output order, whitespace-normalised, repeats kept.
        problems (`list[str]`, *optional*, defaults to `[]`):
            Problem kinds found (each at most once, in the order of `PROBLEM_KINDS`); `[]` for a clean answer.
    """

    entities: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_output(text: str, answer_format: str = ANSWER_FORMAT) -> ParsedOutput:
    """Read the entity strings out of one generated answer; never raises on the text (see the module docstring for the
    policy).

    Args:
        text (`str`):
            The decoded generation (prompt excluded).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            `marked` (` <<< X >>>` groups) or `pointer` (` X >>>`): the format the model was trained on.

    Returns:
        `ParsedOutput`: the entities and the kinds of problems met.
    """
    found: set[str] = set()
    end = text.find(IM_END)
    cut = end < 0
    if cut:
        found.add(NO_END)
    else:
        text = text[:end]

    prefix = _PREFIX_RE.search(text)
    if prefix is None:
        found.add(NO_PREFIX)
        body = text
        if cut and _is_cut_marker(body, ANSWER_PREFIX):
            body = ""
    else:
        if text[: prefix.start()].strip():
            found.add(TEXT_OUTSIDE)
        body = text[prefix.end() :]

    if check_answer_format(answer_format) == "pointer":
        return _parse_pointer(body, cut, found)
    entities: list[str] = []
    pieces = _MARKER_RE.split(body)  # text, marker, text, marker, ..., text
    open_group: str | None = None  # the text of the group being read, once a `<<<` has been seen
    for index, piece in enumerate(pieces):
        if piece == OPEN:
            if open_group is not None:
                found.add(UNBALANCED)
            open_group = ""
        elif piece == CLOSE:
            if open_group is None:
                found.add(UNBALANCED)
            elif _normalise(open_group):
                entities.append(_normalise(open_group))
            else:
                found.add(EMPTY_ENTITY)
            open_group = None
        elif open_group is not None:
            open_group = piece
        elif piece.strip():
            is_last = index == len(pieces) - 1
            if not (cut and is_last and (_is_cut_marker(piece, IM_END) or _is_cut_marker(piece, OPEN))):
                found.add(TEXT_OUTSIDE)
    if open_group is not None:
        found.add(UNBALANCED)
    return ParsedOutput(entities, [kind for kind in PROBLEM_KINDS if kind in found])


def _parse_pointer(body: str, cut: bool, found: set[str]) -> ParsedOutput:
    """The `pointer` format's groups: every stretch of `body` that a `>>>` closes."""
    *groups, tail = body.split(CLOSE)
    entities = []
    for group in groups:
        if _normalise(group):
            entities.append(_normalise(group))
        else:
            found.add(EMPTY_ENTITY)
    if tail.strip() and not (cut and _is_cut_marker(tail, IM_END)):
        found.add(UNBALANCED)
    return ParsedOutput(entities, [kind for kind in PROBLEM_KINDS if kind in found])


@dataclass
class SpanMatch:
    """Entity strings mapped onto a sentence.

    Args:
        spans (`list[Span]`, *optional*, defaults to `[]`):
            The matched spans over token indices, sorted.
        not_found (`list[str]`, *optional*, defaults to `[]`):
            Entity strings that are no token-aligned run of the sentence, or were predicted more often than they occur
            (once per unmatched prediction).
        placed (`list[Span | None]`, *optional*, defaults to `[]`):
            Per entity string, in the order given, the span it took (`None`: not found); it carries a string's score
            over to its span.
    """

    spans: list[Span] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    placed: list[Span | None] = field(default_factory=list, compare=False)


def _first_free_run(tokens: Sequence[str], words: list[str], taken: list[bool]) -> int | None:
    """Start of the first run of `tokens` equal to `words` that touches no taken token; None if there is none."""
    width = len(words)
    if not width:  # an empty string names no run
        return None
    for start in range(len(tokens) - width + 1):
        if list(tokens[start : start + width]) == words and not any(taken[start : start + width]):
            return start
    return None


def entities_to_spans(tokens: Sequence[str], entities: Sequence[str], entity_type: str) -> SpanMatch:
    """Map predicted entity strings of one type onto the sentence's tokens.

    An entity matches a contiguous run of tokens equal to its whitespace-split words: exactly, case and Unicode form
    included. We do not fall back to looser matching because the constrained decoder can only write exact runs of the
    input's words; a string that does not match exactly was invented by the model, and `not_found` should say so
    rather than guess where it belongs.

    Predictions are taken in output order; each takes the first occurrence in the sentence that overlaps no span
    already taken in this call. So two predictions of "Bo" take its first two occurrences, and a string predicted more
    often than it occurs has its extra predictions in `not_found`.

    Args:
        tokens (`Sequence[str]`):
            The sentence's words.
        entities (`Sequence[str]`):
            Predicted entity strings (as `parse_output` returns them).
        entity_type (`str`):
            Type given to every span.

    Returns:
        `SpanMatch`: the spans (sorted) and the strings that could not be placed.
    """
    taken = [False] * len(tokens)
    match = SpanMatch()
    for entity in entities:
        words = entity.split()
        start = _first_free_run(tokens, words, taken)
        if start is None:
            match.not_found.append(entity)
            match.placed.append(None)
            continue
        end = start + len(words)
        taken[start:end] = [True] * len(words)
        match.spans.append(Span(start, end, entity_type))
        match.placed.append(match.spans[-1])
    match.spans.sort()
    return match


def char_offsets(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character `(start, end)` of every token in an original text whose whitespace split is `tokens`.

    The text may separate tokens by any run of whitespace (several spaces, tabs, newlines), as user input does; the
    offsets point into that text, not into the single-space join.

    Args:
        text (`str`):
            The original text.
        tokens (`Sequence[str]`):
            `text.split()`, e.g. the tokens predictions were made on.

    Returns:
        `list[tuple[int, int]]`: one `(start, end)` per token, end exclusive.

    Raises:
        `ValueError`: if `text.split()` differs from `tokens`.
    """
    words = text.split()
    if words != list(tokens):
        at = next((i for i, (a, b) in enumerate(zip(words, tokens)) if a != b), min(len(words), len(tokens)))
        raise ValueError(
            f"tokens do not match the text: {len(tokens)} tokens, the text splits into {len(words)} words; first "
            f"difference at token {at} ({tokens[at] if at < len(tokens) else None!r} vs "
            f"{words[at] if at < len(words) else None!r})"
        )
    offsets, pos = [], 0
    for token in tokens:
        while text[pos].isspace():  # the same whitespace as str.split() uses
            pos += 1
        offsets.append((pos, pos + len(token)))
        pos += len(token)
    return offsets


def resolve_overlaps(spans: Sequence[Span], type_order: Sequence[str]) -> list[Span]:
    """Reduce one sentence's predictions for all types to a non-overlapping set (each type is asked separately, so
    the spans of different types may overlap; BIO tags cannot express that).

    Policy: spans are considered longest first; among equally long spans, the type earlier in `type_order` first
    (types not listed come after the listed ones, by name), then the earlier start. A span is kept when it overlaps
    no span kept before it. So a nested span loses to the one containing it, and of two identical spans of different
    types the earlier type wins. Longer first because a longer answer is usually the more specific one ("New York
    Times" as an organisation over "New York" as a place); identical spans are also dropped.

    Args:
        spans (`Sequence[Span]`):
            Predicted spans of one sentence, any types, any order.
        type_order (`Sequence[str]`):
            Type labels by priority, e.g. the task's type list.

    Returns:
        `list[Span]`: the kept spans, sorted by start. Every dropped span overlaps a kept one.

    Raises:
        `ValueError`: for an empty or negative span (`end <= start`), which overlaps nothing and would always be kept.
    """
    rank = {label: i for i, label in enumerate(type_order)}
    for span in spans:
        if span.end <= span.start or span.start < 0:
            raise ValueError(f"invalid span {span}: need 0 <= start < end")

    def priority(span: Span) -> tuple[int, int, str, int]:
        return (span.start - span.end, rank.get(span.type, len(rank)), span.type, span.start)

    occupied: set[int] = set()
    kept = []
    for span in sorted(spans, key=priority):
        positions = range(span.start, span.end)
        if occupied.isdisjoint(positions):
            occupied.update(positions)
            kept.append(span)
    return sorted(kept)


@dataclass
class ParseStats:
    """Parsing outcomes aggregated over a run.

    Args:
        outputs (`int`, *optional*, defaults to `0`):
            Answers parsed.
        clean (`int`, *optional*, defaults to `0`):
            Answers with no problem.
        problems (`Counter[str]`, *optional*):
            Problem kind -> number of answers that had it.
        not_found (`int`, *optional*, defaults to `0`):
            Predicted entity strings that could not be placed in their sentence.
        entities (`int`, *optional*, defaults to `0`):
            Entity strings read (the denominator for `not_found`).
    """

    outputs: int = 0
    clean: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    not_found: int = 0
    entities: int = 0

    def update(self, parsed: ParsedOutput, match: SpanMatch | None = None) -> None:
        """Count one parsed answer and, when given, its match against the sentence."""
        self.outputs += 1
        self.clean += not parsed.problems
        self.problems.update(parsed.problems)
        self.entities += len(parsed.entities)
        if match is not None:
            self.not_found += len(match.not_found)

    def as_dict(self) -> dict:
        """A JSON-ready summary; `problems` lists every kind, zero counts included, so runs compare column by column."""
        return {
            "outputs": self.outputs,
            "clean": self.clean,
            "problems": {kind: self.problems[kind] for kind in PROBLEM_KINDS} | dict(sorted(self.problems.items())),
            "entities": self.entities,
            "not_found": self.not_found,
        }
