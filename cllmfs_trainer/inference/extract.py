"""Raw texts in, entities with character offsets and scores out: what `EntityExtractor.extract` does.

A text of any length becomes sentences (`sentencex`, rule-based, about 300 languages), and each sentence its words
(split on whitespace); a sentence longer than the extractor's `max_sentence_words` is cut further by
`split_sentence`, between words. The predicted word spans map back to character offsets into the text as given.
Nothing is dropped silently: a sentence cut into pieces (an entity across a cut cannot be found) and answers cut by
`max_new_tokens` (entities after the cut are missing) are logged as warnings with their counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cllmfs_trainer.data.io import Sentence
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import control_character
from cllmfs_trainer.inference.parse import char_offsets

if TYPE_CHECKING:
    from cllmfs_trainer.inference.generate import EntityExtractor

logger = logging.getLogger(__name__)

# What `extract(types=...)` takes: labels of known types, `EntityType`s, or `{label: description}` for new ones.
TypesArgument = str | EntityType | Mapping[str, str] | Sequence[str | EntityType] | None


@dataclass(frozen=True)
class Entity:
    """One entity found in a text.

    Args:
        start (`int`):
            Character offset of its first character in the text.
        end (`int`):
            Character offset just after its last character (`text[start:end]` is the entity).
        type (`str`):
            The type's label.
        text (`str`):
            The entity as it appears in the text.
        score (`float`, *optional*):
            The probability of the entity's tokens and closing marker under the constraint (`inference.scores`);
            `None` where decoding gives none (unconstrained, sampling or beams).
    """

    start: int
    end: int
    type: str
    text: str
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def select_types(requested: TypesArgument, known: Sequence[EntityType]) -> list[EntityType]:
    """The types to ask for: `known` when `requested` is None, else each requested label, type or description.

    Args:
        requested (`TypesArgument`):
            A label or a list of labels of `known` types, `EntityType`s, or a mapping `{label: description}`
            (a label of a known type may be given a new description there; the name of a new type is its label).
        known (`Sequence[EntityType]`):
            The types the extractor knows (its own and its run's), with descriptions.

    Raises:
        `UserError`: for a label that no known type has (naming the known ones and how to describe it), a label
            given twice, or a description that is not a non-empty string.
    """
    if requested is None:
        return list(known)
    by_label = {t.label: t for t in known}
    if isinstance(requested, Mapping):
        selected = []
        for label, description in requested.items():
            if not isinstance(label, str) or not isinstance(description, str) or not description.strip():
                raise UserError(f"types: {label!r} needs a non-empty string description, got {description!r}")
            selected.append(EntityType(label, by_label[label].name if label in by_label else label, description))
    else:
        items = [requested] if isinstance(requested, (str, EntityType)) else list(requested)
        selected = []
        for item in items:
            if isinstance(item, EntityType):
                selected.append(item)
            elif isinstance(item, str) and item in by_label:
                selected.append(by_label[item])
            else:
                raise UserError(
                    f"types: {item!r} is not a type of this extractor (it knows {sorted(by_label)}); give a new type "
                    'with its description, e.g. types={"drug": "names of medicines and active substances"}'
                )
    labels = [t.label for t in selected]
    if len(set(labels)) != len(labels) or not labels:
        raise UserError(f"types: give at least one type, each once; got {labels}")
    return selected


def sentence_spans(text: str, split_sentences: bool, language: str = "en") -> list[tuple[int, int]]:
    """Character `(start, end)` of each sentence of `text` that holds a word (the text itself without
    `split_sentences`)."""
    if not split_sentences:
        return [(0, len(text))] if text.strip() else []
    from sentencex import get_sentence_boundaries

    bounds = [(b["start_index"], b["end_index"]) for b in get_sentence_boundaries(language, text)]
    return [(start, end) for start, end in bounds if text[start:end].strip()]


def extract_entities(
    extractor: EntityExtractor,
    texts: Sequence[str],
    types: TypesArgument = None,
    threshold: float | None = None,
    split_sentences: bool = True,
    language: str = "en",
    progress: bool = False,
) -> list[list[Entity]]:
    """Find the entities of every text; see `EntityExtractor.extract`, which calls this."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"texts[{index}] is a {type(text).__name__}; expected a string")
        if control_character(text):
            raise UserError(f"texts[{index}] contains the control character {control_character(text)!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold must be a probability between 0 and 1, got {threshold!r}")
    if threshold is not None and not extractor.gives_scores:
        raise UserError(
            "threshold needs a score per entity, which only constrained greedy decoding in our own loop gives "
            "(constrained, compact_decoding, no sampling or beams)"
        )
    selected = select_types(types, extractor.known_types())
    pieces = [
        (index, start, text[start:end])
        for index, text in enumerate(texts)
        for start, end in sentence_spans(text, split_sentences, language)
    ]
    sentences = [Sentence(piece.split(), [], f"text {index}") for index, _, piece in pieces]
    long = sum(len(s.tokens) > extractor.max_sentence_words for s in sentences)
    if long:
        logger.warning(
            "%d sentence(s) longer than %d words were cut into pieces between words; an entity across a cut "
            "cannot be found (raise max_sentence_words to cut less)",
            long,
            extractor.max_sentence_words,
        )
    answers_before, cut_before = extractor.stats.outputs, extractor.stats.problems["no_end"]
    predictions = extractor.predict(sentences, progress=progress, types=selected)
    cut = extractor.stats.problems["no_end"] - cut_before
    if cut:
        logger.warning(
            "%d of %d answers reached max_new_tokens=%d before their end; entities after the cut are missing "
            "(raise max_new_tokens)",
            cut,
            extractor.stats.outputs - answers_before,
            extractor.max_new_tokens,
        )
    found: list[list[Entity]] = [[] for _ in texts]
    for (index, start, piece), prediction in zip(pieces, predictions):
        offsets = char_offsets(piece, prediction.sentence.tokens)
        for span in prediction.spans:
            score = prediction.scores.get(span)
            if threshold is not None and score is not None and score < threshold:
                continue
            begin, end = start + offsets[span.start][0], start + offsets[span.end - 1][1]
            found[index].append(Entity(begin, end, span.type, texts[index][begin:end], score))
    return found
