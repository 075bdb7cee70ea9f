"""The core types of the data path: `Span` (token start, end exclusive, type), `Sentence` (tokens, gold spans, an id
that traces back to file:line or dataset:index) and `Corpus` (the sentences of one file or split, and its repairs).

The readers and writers of `cllmfs_trainer.data.io` produce and consume them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """A gold or predicted entity over token indices `[start, end)`."""

    start: int
    end: int
    type: str


@dataclass
class Sentence:
    """One tokenised sentence with flat entity spans.

    Args:
        tokens (`list[str]`):
            The words, in order. The sentence text is the tokens joined by single spaces.
        spans (`list[Span]`, *optional*, defaults to `[]`):
            Entities as `Span(start, end, type)` over token indices, end exclusive, sorted and non-overlapping.
        id (`str`, *optional*, defaults to `""`):
            Where the sentence came from, e.g. `train.txt:118` or `wnut_17/train:42`.
    """

    tokens: list[str]
    spans: list[Span] = field(default_factory=list)
    id: str = ""

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def token_char_offsets(self) -> list[tuple[int, int]]:
        """Character `(start, end)` of every token in `self.text`."""
        offsets, pos = [], 0
        for token in self.tokens:
            offsets.append((pos, pos + len(token)))
            pos += len(token) + 1
        return offsets

    def span_text(self, span: Span) -> str:
        return " ".join(self.tokens[span.start : span.end])

    def to_bio(self) -> list[str]:
        tags = ["O"] * len(self.tokens)
        for start, end, etype in self.spans:
            tags[start] = f"B-{etype}"
            for i in range(start + 1, end):
                tags[i] = f"I-{etype}"
        return tags

    def types(self) -> set[str]:
        return {span.type for span in self.spans}

    def restrict_types(self, keep: Iterable[str]) -> Sentence:
        """A copy whose spans of types outside `keep` are dropped (they become O, as in N-way episodes)."""
        keep = set(keep)
        return Sentence(list(self.tokens), [s for s in self.spans if s.type in keep], self.id)


@dataclass
class Corpus:
    """Sentences read from one source, with what the reader had to repair.

    Args:
        sentences (`list[Sentence]`):
            The sentences, in file order.
        source (`str`, *optional*, defaults to `""`):
            The file path or dataset name they came from.
        repairs (`list[tuple[str, str]]`, *optional*, defaults to `[]`):
            `(location, tag)` of every `I-` tag that did not continue an entity and was read as a start.
    """

    sentences: list[Sentence]
    source: str = ""
    repairs: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[Sentence]:
        return iter(self.sentences)

    def __getitem__(self, index: int) -> Sentence:
        return self.sentences[index]

    def types(self) -> list[str]:
        """Entity types present, sorted."""
        return sorted({span.type for sentence in self.sentences for span in sentence.spans})
