"""Tag schemes at the file boundary: BIO, IOB1 and BIOES tags to spans, with the one repair BIO data needs.

Inside the library there are only spans (`cllmfs_trainer.data.sentence.Span`). An `I-X` that does not continue an
`X` entity starts a new entity; such repairs are counted on the `Corpus` and logged, so nothing changes silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cllmfs_trainer.data.sentence import Corpus, Sentence, Span
from cllmfs_trainer.errors import DataFormatError
from cllmfs_trainer.files import control_character

logger = logging.getLogger(__name__)

SCHEMES = ("auto", "bio", "iob1", "bioes")
# Prefixes allowed per scheme. BIOES is also written IOBES, BILOU (L = E, U = S); we accept those letters too.
_PREFIXES = {"bio": set("BI"), "iob1": set("BI"), "bioes": set("BIESLU")}


def tags_to_spans(tags: Sequence[str], scheme: str = "bio") -> tuple[list[Span], list[int]]:
    """Decode one sentence's tags into spans.

    Args:
        tags (`Sequence[str]`):
            One tag per token, already validated by `split_tag`.
        scheme (`str`, *optional*, defaults to `"bio"`):
            `bio`, `iob1` or `bioes`.

    Returns:
        `tuple[list[Span], list[int]]`: the spans, and the indices of tags that had to be repaired (an `I-`/`E-` tag
        that continues no entity of its type starts a new one). In IOB1 such a tag is the normal way to start an entity,
        so it is not a repair there.
    """
    spans: list[Span] = []
    repaired: list[int] = []
    start, current = None, None  # open entity

    def close(end: int) -> None:
        nonlocal start, current
        if current is not None:
            spans.append(Span(start, end, current))
        start, current = None, None

    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        prefix = {"L": "E", "U": "S"}.get(prefix, prefix)
        if prefix == "O":
            close(i)
        elif prefix in ("B", "S"):
            close(i)
            start, current = i, etype
        elif current != etype:  # I-/E- that continues nothing of its type
            if scheme != "iob1":
                repaired.append(i)
            close(i)
            start, current = i, etype
        if prefix in ("S", "E") and current is not None:
            close(i + 1)
    close(len(tags))
    return spans, repaired


def split_tag(tag: str) -> tuple[str, str]:
    """`B-location-GPE` -> (`B`, `location-GPE`); `O` -> (`O`, ``). Type names may contain `-` and `/`."""
    if tag == "O":
        return "O", ""
    if len(tag) < 3 or tag[1] != "-":
        raise ValueError(f"tag {tag!r} is neither 'O' nor '<prefix>-<type>'")
    etype = tag[2:]
    if any(ch.isspace() for ch in etype) or control_character(etype):
        raise ValueError(f"tag {tag!r} has whitespace or a control character in its type {etype!r}")
    return tag[0], etype


def _detect_scheme(prefixes: set[str]) -> str:
    return "bioes" if prefixes & set("ESLU") else "bio"


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def decode_sentence(
    tokens: list[str], tags: list[str], locations: list[str], scheme: str, sentence_id: str, repairs: list
) -> Sentence:
    spans, repaired = tags_to_spans(tags, scheme)
    repairs.extend((locations[i], tags[i]) for i in repaired)
    return Sentence(tokens, spans, sentence_id)


def validate_tags(tags: list[str], locations: list[str], scheme: str) -> str:
    """Check every tag against the scheme (detecting it when `auto`); returns the concrete scheme."""
    prefixes: dict[str, str] = {}
    for tag, where in zip(tags, locations):
        try:
            prefix, _ = split_tag(tag)
        except ValueError as err:
            raise DataFormatError(f"{where}: {err}; expected BIO, IOB1 or BIOES tags such as B-PER") from None
        prefixes.setdefault(prefix, where)
    unknown = sorted(set(prefixes) - _PREFIXES["bioes"] - {"O"})
    if unknown:
        raise DataFormatError(
            f"{prefixes[unknown[0]]}: tag prefix {unknown[0]!r} belongs to no known tag scheme; "
            "expected O, B-, I- (BIO, IOB1) or also E-, S-, L-, U- (BIOES)"
        )
    if scheme == "auto":
        scheme = _detect_scheme(set(prefixes))
    bad = set(prefixes) - _PREFIXES[scheme] - {"O"}
    if bad:
        prefix = sorted(bad)[0]
        raise DataFormatError(
            f"{prefixes[prefix]}: tag prefix {prefix!r} is not part of the {scheme.upper()} scheme; "
            f"pass the right scheme (one of {', '.join(SCHEMES[1:])})"
        )
    return scheme


def report_repairs(corpus: Corpus) -> Corpus:
    if corpus.repairs:
        first_where, first_tag = corpus.repairs[0]
        logger.warning(
            "%s: %d I- tag(s) continued no entity and were read as entity starts (first: %s at %s)",
            corpus.source,
            len(corpus.repairs),
            first_tag,
            first_where,
        )
    return corpus
