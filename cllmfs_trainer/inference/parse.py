"""Generated answers onto the sentence: entity strings to token spans, tokens to character offsets, and one
non-overlapping set of spans per sentence.

Reading the entity strings out of an answer is `cllmfs_trainer.data.format.parse_output` (`PromptFormat.parse`), beside
the code that writes the answers. `entities_to_spans` then maps the entity strings onto the sentence's tokens,
`char_offsets` finds each token in the raw text, and `resolve_overlaps` merges the per-type predictions of a sentence
into one non-overlapping set for BIO export.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cllmfs_trainer.data.format import PROBLEM_KINDS, ParsedOutput
from cllmfs_trainer.data.io import Span


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
