"""Few-shot tasks from a user's own labelled files: every example is trained on, its labels are the types.

`cllmfs train --train my.jsonl [--types my_types.yaml]` (or the recipe key `train_file:`) reads the file in any format
`read_examples` knows (our JSONL, CoNLL/BIO, doccano, Label Studio, spaCy `.spacy`). The types are the labels the
file uses, in order of first use; a types file gives them names and descriptions. A label without one is asked by
its label alone (its name and description are the label), with one warning that says how to add descriptions.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cllmfs_trainer.data.io import Sentence
from cllmfs_trainer.data.readers import read_examples
from cllmfs_trainer.data.registry import EntityType, load_types_file
from cllmfs_trainer.data.sampling import FewShotTask, SupportSet
from cllmfs_trainer.errors import DataFormatError

logger = logging.getLogger(__name__)

OWN_DATASET = "own_files"  # the run record's `dataset` for a training on the user's files: no registry entry


def file_types(sentences: list[Sentence], types_file: str | Path | None, source: str) -> list[EntityType]:
    """The types of labelled sentences: their labels in order of first use, described by `types_file` where it can.

    Raises:
        `DataFormatError`: when the sentences hold no entity at all (nothing to learn a type from).
    """
    labels = list(dict.fromkeys(span.type for sentence in sentences for span in sentence.spans))
    if not labels:
        raise DataFormatError(f"{source}: no labelled entity in any example; label at least one per type")
    described = {t.label: t for t in load_types_file(types_file)} if types_file is not None else {}
    bare = [label for label in labels if label not in described]
    if bare:
        logger.warning(
            "%s: type(s) %s have no description, so the model is asked for them by their label alone; descriptions "
            "help it (a types file: --types my_types.yaml with `types: [{label, name, description}]`, docs/data.md)",
            source,
            bare,
        )
    return [described.get(label, EntityType(label, label, label)) for label in labels]


def task_from_file(train_file: str | Path, types_file: str | Path | None = None, format: str = "auto") -> FewShotTask:
    """An INTRA task whose support set is every example of `train_file` (no sampling), and no query.

    Args:
        train_file (`str` or `Path`):
            The labelled examples.
        types_file (`str` or `Path`, *optional*):
            Names and descriptions of the types (`load_types_file`); types it lists that the file never uses are
            left out (nothing to learn them from).
        format (`str`, *optional*, defaults to `"auto"`):
            The file's format (see `read_examples`).
    """
    corpus = read_examples(train_file, format=format)
    types = file_types(corpus.sentences, types_file, str(train_file))
    counts = {t.label: sum(s.type == t.label for x in corpus.sentences for s in x.spans) for t in types}
    support = SupportSet(corpus.sentences, [t.label for t in types], min(counts.values()), None, str(train_file))
    notes = {"train_file": str(train_file), "examples": len(corpus.sentences), "mentions": counts}
    return FewShotTask("intra", support, [], types, types, notes)
