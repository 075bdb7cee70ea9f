"""The pieces of an answer and their tokens: what the constraint may let the model write, read off the tokenizer.

An answer (`cllmfs_trainer.data.format.build_completion`) is the answer prefix, then ` <<<`, ` RUN`, ` >>>` for each
entity (` RUN`, ` >>>` in the `pointer` answer format), then ` <im_end>`. The constraint works on token ids, so it
must know which token sequences the model learnt for each of these pieces. We take them from the tokenizer itself, in
context: full completions are tokenised exactly as in training (`add_special_tokens=False`) and cut into pieces with
the offset mapping. This relies on a completion's tokens being the concatenation of its pieces' tokens, which holds
for byte-level BPE (SmolLM2, GPT-2 style) and SentencePiece/Metaspace (LLaMA-2) because every piece after the prefix
starts with a space and neither merges a token across a space. Cutting checks it: a token that covers characters of
two pieces, or a piece whose tokens change with its context, raises `TokenizerMismatchError` naming the piece, rather
than producing silently wrong masks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cllmfs_trainer.data.format import ANSWER_FORMAT, ANSWER_PREFIX, CLOSE, IM_END, OPEN, build_completion, open_marker

DEFAULT_MAX_ENTITY_WORDS = 10
# Any word does for the template probe: pre-tokenisation splits at the spaces around it.
_PROBE_WORD = "Entity"

PREFIX, OPEN_PIECE, RUN, CLOSE_PIECE, END = "prefix", "open", "run", "close", "end"  # kinds of answer pieces


class TokenizerMismatchError(ValueError):
    """The tokenizer does not tokenise completions as the concatenation of their pieces' tokens."""


class _Piece(NamedTuple):  # a NamedTuple: hundreds are made per sentence, and it is cheaper than a dataclass
    kind: str
    start: int
    end: int
    text: str

    def describe(self) -> str:
        if self.kind == PREFIX:
            return "the answer prefix"
        return f"the run {self.text[1:]!r}" if self.kind == RUN else f"the marker {self.text!r}"


def _pieces(entities: Sequence[str], answer_format: str = ANSWER_FORMAT) -> tuple[str, list[_Piece]]:
    """`build_completion(entities, answer_format)` and its pieces' character ranges (each piece after the prefix
    starts with a space)."""
    text = build_completion(entities, answer_format)
    opening = [(OPEN_PIECE, f" {OPEN}")] if open_marker(answer_format) else []
    parts = [(PREFIX, ANSWER_PREFIX)]
    for entity in entities:
        parts += [*opening, (RUN, f" {entity}"), (CLOSE_PIECE, f" {CLOSE}")]
    parts.append((END, f" {IM_END}"))
    pieces, pos = [], 0
    for kind, part in parts:
        pieces.append(_Piece(kind, pos, pos + len(part), part))
        pos += len(part)
    if "".join(part for _, part in parts) != text:  # guards against a change of the format in sft.py
        raise RuntimeError(f"build_completion() no longer writes the format the constraint assumes: {text!r}")
    return text, pieces


def _judged_chars(text: str, start: int, end: int) -> tuple[int, int] | None:
    """First and last character by which a token with offsets `(start, end)` is assigned to a piece.

    Those are its visible (non-space) characters: offsets differ between tokenizers in whether they count a leading
    space (byte-level BPE may trim it). A token of whitespace only is judged by its first character: pieces start
    with their space, so SentencePiece's lone `▁` before byte-fallback tokens belongs to the piece after it. `None`
    for a token without characters.
    """
    visible_start, visible_end = start, end
    while visible_start < visible_end and text[visible_start].isspace():
        visible_start += 1
    while visible_end > visible_start and text[visible_end - 1].isspace():
        visible_end -= 1
    if visible_start < visible_end:
        return visible_start, visible_end - 1
    return (start, start) if start < end else None


def _cut(
    tokenizer: Any,
    text: str,
    pieces: list[_Piece],
    ids: Sequence[int],
    offsets: Sequence[Sequence[int]],
    template: CompletionTemplate | None = None,
) -> list[tuple[int, ...]]:
    """Split one completion's token ids into its pieces' token ids, using the offset mapping.

    With `template`, a one-group completion is first split by the template's piece lengths and only the tokens at
    the piece boundaries are judged (offsets are monotone, so the tokens between them follow): building a sentence's
    automaton cuts hundreds of such completions. Anything unexpected falls back to judging every token, which gives
    the precise error.

    Raises:
        `TokenizerMismatchError`: a token covers characters of two pieces, the tokens are out of order, or a piece got
            no token.
    """
    starts = [piece.start for piece in pieces]

    def piece_at(pos: int) -> int:
        return min(max(bisect.bisect_right(starts, pos) - 1, 0), len(pieces) - 1)

    if template is not None and len(pieces) == len(template.one_group()):
        split = _split_by_template(text, pieces, ids, offsets, template)
        if split is not None:
            return split

    cut: list[list[int]] = [[] for _ in pieces]
    current = 0
    for token_id, (start, end) in zip(ids, offsets):
        chars = _judged_chars(text, start, end)
        # A token without characters (some tokenizers give (0, 0)) stays with its predecessor.
        index, last = (current, current) if chars is None else (piece_at(chars[0]), piece_at(chars[1]))
        if index != last:
            raise TokenizerMismatchError(
                f"{type(tokenizer).__name__} merges text across pieces of the answer: token "
                f"{tokenizer.convert_ids_to_tokens(token_id)!r} covers {text[start:end]!r}, which spans "
                f"{pieces[index].describe()} and {pieces[last].describe()}, in {text!r}. The constraint needs "
                "tokenizers that do not merge across the spaces between pieces (byte-level BPE, SentencePiece)."
            )
        if index < current:
            raise TokenizerMismatchError(
                f"{type(tokenizer).__name__} puts token {tokenizer.convert_ids_to_tokens(token_id)!r} of "
                f"{pieces[index].describe()} after a token of {pieces[current].describe()} in {text!r}"
            )
        cut[index].append(token_id)
        current = index
    for piece, piece_ids in zip(pieces, cut):
        if not piece_ids:
            raise TokenizerMismatchError(
                f"{piece.describe()} of {text!r} got no token of its own from {type(tokenizer).__name__}: the "
                "tokenizer merges it into a neighbouring piece"
            )
    return [tuple(piece_ids) for piece_ids in cut]


def _split_by_template(
    text: str,
    pieces: list[_Piece],
    ids: Sequence[int],
    offsets: Sequence[Sequence[int]],
    template: CompletionTemplate,
) -> list[tuple[int, ...]] | None:
    """The fast path of `_cut` for a one-group completion; `None` if it does not apply cleanly."""
    fixed = template.one_group()
    run_length = len(ids) - sum(len(piece_ids) for piece_ids in fixed if piece_ids is not None)
    if run_length < 1:
        return None
    split, position = [], 0
    for index, expected in enumerate(fixed):
        length = run_length if expected is None else len(expected)
        piece_ids = tuple(ids[position : position + length])
        if expected is not None and piece_ids != expected:
            return None
        for token in (position, position + length - 1):  # the tokens at the piece's two boundaries
            chars = _judged_chars(text, *offsets[token])
            if chars is None or chars[0] < pieces[index].start or chars[1] >= pieces[index].end:
                return None
        split.append(piece_ids)
        position += length
    return split


def tokenize_and_cut(
    tokenizer: Any,
    entity_lists: Sequence[Sequence[str]],
    template: CompletionTemplate | None = None,
    answer_format: str | None = None,
) -> list[tuple[list[_Piece], list[tuple[int, ...]]]]:
    """Tokenise the completions of `entity_lists` in one batched call, as in training, and cut each into pieces.

    The answer format is `template`'s, else `answer_format`, else the default."""
    if not entity_lists:  # a tokenizer called on an empty batch fails
        return []
    if template is not None:
        answer_format = template.answer_format
    built = [_pieces(entities, answer_format or ANSWER_FORMAT) for entities in entity_lists]
    encoded = tokenizer([text for text, _ in built], add_special_tokens=False, return_offsets_mapping=True)
    return [
        (pieces, _cut(tokenizer, text, pieces, ids, offsets, template))
        for (text, pieces), ids, offsets in zip(built, encoded["input_ids"], encoded["offset_mapping"])
    ]


@dataclass(frozen=True)
class CompletionTemplate:
    """Token ids of the fixed pieces of every answer, as the tokenizer writes them in a completion.

    Args:
        prefix (`tuple[int, ...]`):
            The answer prefix (`<im_start> I can extract ... entities are`).
        open (`tuple[int, ...]`):
            ` <<<`; `()` in the `pointer` answer format, which has no opening marker.
        close (`tuple[int, ...]`):
            ` >>>`.
        end (`tuple[int, ...]`):
            ` <im_end>` (EOS is not part of it: training appends it as an id).
        answer_format (`str`, *optional*, defaults to `ANSWER_FORMAT`):
            The answer format these pieces belong to.
    """

    prefix: tuple[int, ...]
    open: tuple[int, ...]
    close: tuple[int, ...]
    end: tuple[int, ...]
    answer_format: str = ANSWER_FORMAT

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, answer_format: str = ANSWER_FORMAT) -> CompletionTemplate:
        """Read the pieces off the tokenisation of an empty, a one-group and a two-group completion.

        Raises:
            `TokenizerMismatchError`: the pieces' tokens differ between these completions, or a token spans two pieces.
        """
        cut = tokenize_and_cut(tokenizer, [[], [_PROBE_WORD], [_PROBE_WORD, _PROBE_WORD]], answer_format=answer_format)
        _, empty = cut[0]
        _, one = cut[1]
        opening = one[1] if open_marker(answer_format) else ()
        template = cls(prefix=empty[0], open=opening, close=one[-2], end=empty[-1], answer_format=answer_format)
        for pieces, piece_ids in cut:
            template.check(tokenizer, pieces, piece_ids)
        return template

    def one_group(self) -> tuple[tuple[int, ...] | None, ...]:
        """The fixed pieces' ids of a one-group completion in order, `None` where the run goes."""
        opening = (self.open,) if self.open else ()
        return (self.prefix, *opening, None, self.close, self.end)

    def check(self, tokenizer: Any, pieces: Sequence[_Piece], piece_ids: Sequence[tuple[int, ...]]) -> None:
        """Raise `TokenizerMismatchError` if a fixed piece of a cut completion has other tokens than the template."""
        expected = {PREFIX: self.prefix, OPEN_PIECE: self.open, CLOSE_PIECE: self.close, END: self.end}
        for piece, ids in zip(pieces, piece_ids):
            if piece.kind != RUN and ids != expected[piece.kind]:
                raise TokenizerMismatchError(
                    f"{type(tokenizer).__name__} tokenises {piece.describe()} differently depending on its context: "
                    f"{tokenizer.convert_ids_to_tokens(list(ids))} instead of "
                    f"{tokenizer.convert_ids_to_tokens(list(expected[piece.kind]))} in "
                    f"{''.join(piece.text for piece in pieces)!r}"
                )


def sentence_words(sentence: str | Sequence[str]) -> list[str]:
    """The words of a sentence given as its tokens, or as its text (the tokens joined by single spaces).

    Text is split at single spaces only, not at every whitespace character, so that a token containing, say, a
    no-break space stays one word, as in the text `build_prompt` writes.
    """
    if isinstance(sentence, str):
        return [word for word in sentence.split(" ") if word]
    return list(sentence)


def candidate_runs(words: Sequence[str], max_entity_words: int = DEFAULT_MAX_ENTITY_WORDS) -> list[str]:
    """Every distinct contiguous run of 1 to `max_entity_words` words, joined by single spaces, in sentence order."""
    runs = dict.fromkeys(
        " ".join(words[start:stop])
        for start in range(len(words))
        for stop in range(start + 1, min(start + max_entity_words, len(words)) + 1)
    )
    return list(runs)
