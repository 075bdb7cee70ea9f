"""The dataset registry: which entity types each dataset has, how to name and describe them, and where its files are.

Type inventories live in `cllmfs_trainer/data/types/<dataset>.yaml`, in the same format users write to override or
extend them (`load_types_file`). Each type maps a label as it appears in the tags (`PER`, `location-GPE`) to a
natural-language name and a one-phrase description, which the instruction uses (see `cllmfs_trainer.data.sft`).

WNUT'17 (CC BY 4.0) ships with the package. The other datasets are not ours to redistribute (CoNLL-2003, OntoNotes,
i2b2) or too large to ship: their files are found under a data folder given by argument or by `CLLMFS_DATA_DIR`,
laid out as `<folder>/<dataset>/{train,dev,test}.txt`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.io import Corpus, DataFormatError, read_conll
from cllmfs_trainer.errors import UnknownNameError
from cllmfs_trainer.files import control_character, read_text_file
from cllmfs_trainer.parsing import LineMapping, load_yaml

DATA_DIR_ENV = "CLLMFS_DATA_DIR"
SHIPPED_DATA = Path(__file__).parent / "shipped"
TYPE_FIELDS = ("label", "name", "description")
TYPES_FILE_FIELDS = ("types", "dataset")  # `dataset` names the inventory; the registry's own files carry it


@dataclass(frozen=True)
class EntityType:
    """One entity type.

    Args:
        label (`str`):
            The type as written in the tags, e.g. `PER` in `B-PER`.
        name (`str`):
            Natural-language name used in the instruction, e.g. `person`.
        description (`str`):
            Completes "the entity of {name} refers to ...", lowercase, no final period.
    """

    label: str
    name: str
    description: str


@dataclass
class DatasetInfo:
    """A registry entry.

    Args:
        key (`str`):
            Registry key, e.g. `wnut17`.
        title (`str`):
            Human-readable name.
        types (`list[EntityType]`):
            The type inventory, in a fixed order (type ids are 1 + the index; 0 is "outside").
        license (`str`):
            License of the data, as stated by its source.
        splits (`tuple[str, ...]`, *optional*, defaults to `("train", "dev", "test")`):
            Split names with files.
        shipped (`bool`, *optional*, defaults to `False`):
            Whether the files ship inside this package.
        hf_id (`str`, *optional*):
            Hub id for users with hub access (`load_hf_dataset`), if one exists.
    """

    key: str
    title: str
    types: list[EntityType]
    license: str
    splits: tuple[str, ...] = ("train", "dev", "test")
    shipped: bool = False
    hf_id: str | None = None
    aliases: tuple[str, ...] = field(default=())
    folder: str | None = None  # folder name under the data dir when it differs from the key
    prior_only: bool = False  # general-NER data for the NER prior, never an evaluation target
    # Every split is a fixed part of this one split file of `folder` (`CARVED_PARTS`); types from `types_from`.
    carved_from: str | None = None

    def type(self, label: str) -> EntityType:
        for entity_type in self.types:
            if entity_type.label == label:
                return entity_type
        raise UnknownNameError(
            f"dataset {self.key!r} has no type {label!r}; its types are {[t.label for t in self.types]}"
        )

    def split_path(self, split: str, data_dir: str | Path | None = None, check: bool = True) -> Path:
        """The file of `split`: the shipped copy, or `<data_dir>/<key>/<split>.txt`.

        Raises:
            `FileNotFoundError`: with what to do, when the split or the data folder is missing.
        """
        if check and split not in self.splits:
            raise FileNotFoundError(f"dataset {self.key!r} has no {split!r} split; it has {list(self.splits)}")
        folder = resolve_data_dir(data_dir)
        name = self.folder or self.key
        if folder is not None and (folder / name / f"{split}.txt").is_file():
            return folder / name / f"{split}.txt"
        if self.shipped:
            return SHIPPED_DATA / name / f"{split}.txt"
        where = f"{folder / name}" if folder else f"a data folder (pass data_dir or set {DATA_DIR_ENV})"
        hub = f", or load it from the hub with load_hf_dataset({self.hf_id!r}, ...)" if self.hf_id else ""
        raise FileNotFoundError(
            f"{self.title} is not shipped with cllmfs-trainer ({self.license}); put {split}.txt in {where}{hub}"
        )

    def check_split(self, split: str, data_dir: str | Path | None = None) -> Path:
        """The file `load(split)` reads, checked to exist: lets a command refuse a missing split before a model loads.

        Raises:
            `FileNotFoundError`: as `split_path`.
        """
        if split not in self.splits:
            raise FileNotFoundError(f"dataset {self.key!r} has no {split!r} split; it has {list(self.splits)}")
        return self.split_path(self.carved_from or split, data_dir, check=False)

    def load(self, split: str, data_dir: str | Path | None = None, allow_empty: bool = True) -> Corpus:
        """Read a split and check that every tag type is in the registry's inventory.

        Args:
            split (`str`):
                The split name.
            data_dir (`str` or `Path`, *optional*):
                The data folder (see `split_path`).
            allow_empty (`bool`, *optional*, defaults to `True`):
                Whether a split without sentences is read with a warning rather than refused.
        """
        if self.carved_from is not None:
            path = self.check_split(split, data_dir)
            whole = read_conll(path, allow_empty=allow_empty)
            part = [s for i, s in enumerate(whole.sentences) if i % 10 in CARVED_PARTS[split]]
            corpus = Corpus(part, f"{path} ({split} part: sentences i with i % 10 in {CARVED_PARTS[split]})")
        else:
            path = self.split_path(split, data_dir)
            corpus = read_conll(path, allow_empty=allow_empty)
        known = {t.label for t in self.types}
        unknown = sorted(set(corpus.types()) - known)
        if unknown:
            raise DataFormatError(
                f"{path}: types {unknown} are not in the {self.key!r} registry entry; "
                "extend it with a types file (see load_types_file)"
            )
        return corpus


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The data folder: the argument, else `$CLLMFS_DATA_DIR`, else None."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def _at(source: str, mapping: Any, key: Any = None) -> str:
    """`source:line` of a mapping (or of one of its keys) read by `load_yaml`; `source` alone otherwise."""
    if isinstance(mapping, LineMapping):
        return f"{source}:{mapping.key_lines.get(key, mapping.line)}"
    return source


def _parse_types(raw: Any, source: str) -> list[EntityType]:
    """Parse the `types:` value of a types file: a list of {label, name, description} or a mapping by label.

    Raises:
        `DataFormatError`: naming the file, line and field for an unknown field, a label, name or description that is
            not a string, a missing description, or a label or name that appears twice.
    """
    items: list[tuple[Any, str, Any]] = []  # (item, where, its line anchor)
    if isinstance(raw, dict):  # short form: {label: description} or {label: {name, description}}
        for index, (label, value) in enumerate(raw.items()):
            where = f"{_at(source, raw, label)}: field 'types[{index}]'"
            if isinstance(value, dict):
                if "label" in value:
                    raise DataFormatError(f"{where}: type {label!r} sets 'label' twice (as its key and as a field)")
                item = LineMapping(getattr(value, "line", 0))
                item.update({"label": label, **value})
                item.key_lines = {"label": raw.key_lines.get(label, 0) if isinstance(raw, LineMapping) else 0}
                item.key_lines.update(getattr(value, "key_lines", {}))
                items.append((item, where, item))
            else:
                items.append(({"label": label, "description": value}, where, None))
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            items.append((item, f"{_at(source, item)}: field 'types[{index}]'", item))
    if not items:
        raise DataFormatError(f"{source}: field 'types' must be a non-empty list or mapping of types")
    types, seen_labels, seen_names = [], set(), set()
    for item, where, anchor in items:
        if not isinstance(item, dict):
            raise DataFormatError(f"{where} must be a mapping with label, name and description")
        unknown = [key for key in item if key not in TYPE_FIELDS]
        if unknown:
            raise DataFormatError(
                f"{_at(source, anchor, unknown[0])}: unknown field {unknown[0]!r} in type {item.get('label')!r}; "
                f"a type has the fields {', '.join(TYPE_FIELDS)}"
            )
        label = item.get("label")
        if not isinstance(label, str) or not label.strip() or any(ch.isspace() for ch in label.strip()):
            got = f", got {label!r}" if label is not None else ""
            raise DataFormatError(
                f"{where}.label must be a non-empty tag type without spaces (quote numbers and the like){got}"
            )
        label = label.strip()
        name = item.get("name", label)
        if name is None:
            name = label
        if not isinstance(name, str) or not name.strip():
            raise DataFormatError(f"{where}.name must be a non-empty string for type {label!r}, got {name!r}")
        name = name.strip()
        description = item.get("description")
        if description is None or (isinstance(description, str) and not description.strip()):
            raise DataFormatError(f"{where}.description is missing for type {label!r}; the instruction needs it")
        if not isinstance(description, str):
            raise DataFormatError(
                f"{where}.description of type {label!r} must be a string, got {description!r} (quote it)"
            )
        for key, value in (("label", label), ("name", name), ("description", description)):
            if control_character(value):
                raise DataFormatError(
                    f"{where}.{key} {value!r} contains the control character {control_character(value)!r}"
                )
        if label in seen_labels or name in seen_names:
            raise DataFormatError(f"{where}: label {label!r} or name {name!r} appears twice")
        seen_labels.add(label)
        seen_names.add(name)
        types.append(EntityType(label, name, description.strip().rstrip(".")))
    return types


def load_types_file(path: str | Path) -> list[EntityType]:
    """Read a YAML types file.

    Either the registry's own format::

        types:
          - label: PER
            name: person
            description: people named by their names

    or the short form `types: {PER: "people named by their names"}` (the name is then the label).

    A key may appear only once, every field must be known, and labels, names and descriptions must be strings;
    errors name the file and line.

    Raises:
        `UserError`: if the file is missing or a folder.
        `DataFormatError`: for bytes that are not UTF-8, invalid YAML, a duplicate key, an unknown field or a bad value.
    """
    path = Path(path)
    # No field of a types file is a boolean, so YAML 1.1 booleans stay strings: the labels `yes:` and `no:` survive.
    data = load_yaml(read_text_file(path, "types file"), str(path), booleans=False)
    if not isinstance(data, dict) or "types" not in data:
        raise DataFormatError(f"{path}: expected a mapping with a 'types' field")
    unknown = [key for key in data if key not in TYPES_FILE_FIELDS]
    if unknown:
        raise DataFormatError(
            f"{_at(str(path), data, unknown[0])}: unknown field {unknown[0]!r}; a types file has the fields "
            f"{', '.join(TYPES_FILE_FIELDS)}"
        )
    return _parse_types(data["types"], str(path))


def merge_types(base: Iterable[EntityType], override: Iterable[EntityType]) -> list[EntityType]:
    """Types of `base` with those of `override` replacing them by label; new labels are appended in order."""
    merged = {t.label: t for t in base}
    for entity_type in override:
        merged[entity_type.label] = entity_type
    return list(merged.values())


def _builtin_types(key: str) -> list[EntityType]:
    text = resources.files("cllmfs_trainer.data").joinpath("types", f"{key}.yaml").read_text(encoding="utf-8")
    source = f"cllmfs_trainer/data/types/{key}.yaml"
    return _parse_types(load_yaml(text, source, booleans=False)["types"], source)


_ENTRIES: dict[str, dict[str, Any]] = {
    "wnut17": dict(
        title="WNUT'17 Emerging Entities",
        license="CC BY 4.0",
        shipped=True,
        hf_id="wnut_17",
        aliases=("wnut_17", "wnut"),
    ),
    "conll2003": dict(
        title="CoNLL-2003 English",
        license="research only, not redistributable",
        hf_id="conll2003",
        aliases=("conll03", "conll"),
    ),
    "ontonotes5": dict(
        title="OntoNotes 5.0 English", license="LDC2013T19, not redistributable", aliases=("ontonotes",)
    ),
    "gum": dict(
        title="GUM (2017, flat)",
        license="annotations CC BY 4.0; texts CC BY / CC BY-SA / CC BY-NC-SA",
        splits=("train", "test"),
    ),
    "i2b2_2014": dict(
        title="i2b2 2014 de-identification", license="n2c2 data use agreement, not redistributable", aliases=("i2b2",)
    ),
    "fewnerd": dict(
        title="Few-NERD (INTER)",
        license="CC BY-SA 4.0",
        splits=("train", "test"),
        aliases=("fewnerd_inter", "few-nerd"),
        folder="fewnerd_inter",
    ),
}
# General-NER corpora for the NER prior only (`cllmfs_trainer.data.prior`), never an evaluation target: a model trained
# on them has seen their sentences and types. Licenses as their sources state them (../shared/data/README.md).
PRIOR_ENTRIES: dict[str, dict[str, Any]] = {
    "wikigold": dict(title="Wikigold (Wikipedia)", license="CC BY 4.0"),
    "btc": dict(title="Broad Twitter Corpus", license="CC BY 4.0"),
    **{
        f"crossner_{domain}": dict(title=f"CrossNER, {domain}", license="MIT (CrossNER repository); Wikipedia text")
        for domain in ("politics", "science", "music", "literature", "ai")
    },
    "sec_filings": dict(title="SEC filings (loan agreements)", license="CC BY 3.0", splits=("train", "test")),
    "ncbi_disease": dict(title="NCBI Disease (PubMed abstracts)", license="public domain (NLM notice)"),
    "anem": dict(
        title="AnEM (anatomical entities)",
        license="annotations CC BY-SA 3.0; texts under NLM/PMC terms",
        splits=("train", "test"),
    ),
    "uner_en_ewt": dict(title="Universal NER, English-EWT", license="CC BY-SA 4.0", splits=("dev", "test")),
    "uner_en_pud": dict(title="Universal NER, English-PUD", license="CC BY-SA 3.0", splits=("test",)),
}
_ENTRIES.update({key: {**entry, "prior_only": True} for key, entry in PRIOR_ENTRIES.items()})
# The benchmark's test of types the NER prior never saw: 5-shot on Few-NERD's 17 INTER test types, with the support
# pool, a dev part (to choose settings on) and the test part all cut from the INTER test split, by sentence position.
CARVED_PARTS = {"train": (0, 1), "dev": (2,), "test": (3, 4, 5, 6, 7, 8, 9)}
_ENTRIES["fewnerd_unseen"] = dict(
    title="Few-NERD INTER test types (unseen by the NER prior)",
    license="CC BY-SA 4.0",
    folder="fewnerd_inter",
    carved_from="test",
)
_cache: dict[str, DatasetInfo] = {}


def dataset_keys() -> list[str]:
    return list(_ENTRIES)


def get_dataset(name: str, types_file: str | Path | None = None) -> DatasetInfo:
    """Look up a registry entry by key or alias, optionally overriding/extending its types with a YAML file."""
    key = name.lower()
    for candidate, entry in _ENTRIES.items():
        if key == candidate or key in entry.get("aliases", ()):
            key = candidate
            break
    else:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(dataset_keys())}")
    if key not in _cache:
        _cache[key] = DatasetInfo(key=key, types=_builtin_types(key), **_ENTRIES[key])
    info = _cache[key]
    if types_file is None:
        return info
    return DatasetInfo(**{**info.__dict__, "types": merge_types(info.types, load_types_file(types_file))})
