"""Split long sentences to a token budget without cutting an entity, and map chunk spans back.

A prompt holds one sentence, so a sentence longer than the model's budget must be cut. We cut only between words and
never inside a gold span; each chunk remembers its word offset in the original sentence, so spans predicted on the
chunks map back exactly (`merge_chunk_spans`). A word too long for a prompt (a URL, a base64 blob, a line of one
letter) is shortened in the prompt instead (`shorten_long_words`): the words keep their places, so spans stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cllmfs_trainer.data.io import Sentence, Span

logger = logging.getLogger(__name__)


def shorten_long_words(sentences: Sequence[Sentence], max_chars: int) -> list[Sentence]:
    """The sentences with every word longer than `max_chars` cut to its first `max_chars` characters.

    The words keep their number and order, so a span over the shortened sentence is the same span over the original:
    such a word can still be predicted as (part of) an entity. Sentences without a long word are returned as they are.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    out, shortened = [], 0
    for sentence in sentences:
        if all(len(word) <= max_chars for word in sentence.tokens):
            out.append(sentence)
            continue
        shortened += sum(len(word) > max_chars for word in sentence.tokens)
        tokens = [word[:max_chars] for word in sentence.tokens]
        out.append(Sentence(tokens, list(sentence.spans), sentence.id))
    if shortened:
        logger.warning("%d word(s) longer than %d characters were shortened in the prompts", shortened, max_chars)
    return out


class Chunk(NamedTuple):
    """A piece of a sentence: the piece as a `Sentence` and the index of its first word in the original."""

    sentence: Sentence
    offset: int


def split_sentence(
    sentence: Sentence, max_tokens: int, count_tokens: Callable[[str], int] | None = None
) -> list[Chunk]:
    """Cut `sentence` into chunks of at most `max_tokens` (by `count_tokens` per word), never inside an entity.

    Args:
        sentence (`Sentence`):
            The sentence to split.
        max_tokens (`int`):
            Budget per chunk.
        count_tokens (`Callable[[str], int]`, *optional*):
            Cost of one word, e.g. `lambda w: len(tokenizer(" " + w, add_special_tokens=False).input_ids)`; by default
            every word costs 1.

    Returns:
        `list[Chunk]`: chunks in order; the concatenation of their tokens is the original. A sentence within budget
        gives one chunk. A word or an entity longer than the budget is kept whole in a chunk that exceeds it (with a
        warning): cutting it would lose the annotation.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    costs = [count_tokens(w) if count_tokens else 1 for w in sentence.tokens]
    n = len(costs)
    # A cut at position i (between word i-1 and i) is allowed unless it falls strictly inside a span.
    blocked = set()
    for span in sentence.spans:
        blocked.update(range(span.start + 1, span.end))
    chunks, start = [], 0
    while start < n:
        total, end, best = 0, start, None
        while end < n and total + costs[end] <= max_tokens:
            total += costs[end]
            end += 1
            if end not in blocked:
                best = end
        if best is None:  # one word, or the entity starting here, alone exceeds the budget: take the first cut
            best = next(i for i in range(start + 1, n + 1) if i not in blocked)
            logger.warning(
                "%s: words %d-%d exceed the budget of %d tokens but cannot be cut (one word or one entity); kept whole",
                sentence.id or "sentence",
                start,
                best,
                max_tokens,
            )
        spans = [Span(s.start - start, s.end - start, s.type) for s in sentence.spans if start <= s.start < best]
        part_id = f"{sentence.id}#{len(chunks)}" if sentence.id else f"#{len(chunks)}"
        chunks.append(Chunk(Sentence(sentence.tokens[start:best], spans, part_id), start))
        start = best
    return chunks


def merge_chunk_spans(chunks: Sequence[Chunk], spans_per_chunk: Sequence[Sequence[Span]]) -> list[Span]:
    """Shift spans found in each chunk back to word offsets of the original sentence, sorted."""
    if len(chunks) != len(spans_per_chunk):
        raise ValueError(f"{len(chunks)} chunks but {len(spans_per_chunk)} span lists")
    merged = [
        Span(s.start + chunk.offset, s.end + chunk.offset, s.type)
        for chunk, spans in zip(chunks, spans_per_chunk)
        for s in spans
    ]
    return sorted(merged)
