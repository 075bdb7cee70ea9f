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

import yaml

from cllmfs_trainer.data.io import Corpus, DataFormatError, read_conll

DATA_DIR_ENV = "CLLMFS_DATA_DIR"
SHIPPED_DATA = Path(__file__).parent / "shipped"


@dataclass(frozen=True)
class EntityType:
    """One entity type.

    Args:
        label: The type as written in the tags, e.g. `PER` in `B-PER`.
        name: Natural-language name used in the instruction, e.g. `person`.
        description: Completes "the entity of {name} refers to ...", lowercase, no final period.
    """

    label: str
    name: str
    description: str


@dataclass
class DatasetInfo:
    """A registry entry.

    Args:
        key: Registry key, e.g. `wnut17`.
        title: Human-readable name.
        types: The type inventory, in a fixed order (type ids are 1 + the index; 0 is "outside").
        license: License of the data, as stated by its source.
        splits: Split names with files.
        shipped: Whether the files ship inside this package.
        hf_id: Hub id for users with hub access (`load_hf_dataset`), if one exists.
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

    def type(self, label: str) -> EntityType:
        for entity_type in self.types:
            if entity_type.label == label:
                return entity_type
        raise KeyError(f"dataset {self.key!r} has no type {label!r}; its types are {[t.label for t in self.types]}")

    def split_path(self, split: str, data_dir: str | Path | None = None) -> Path:
        """The file of `split`: the shipped copy, or `<data_dir>/<key>/<split>.txt`.

        Raises:
            FileNotFoundError: with what to do, when the split or the data folder is missing.
        """
        if split not in self.splits:
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

    def load(self, split: str, data_dir: str | Path | None = None) -> Corpus:
        """Read a split and check that every tag type is in the registry's inventory."""
        path = self.split_path(split, data_dir)
        corpus = read_conll(path)
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


def _parse_types(raw: Any, source: str) -> list[EntityType]:
    """Parse the `types:` value of a types file: a list of {label, name, description} or a mapping by label."""
    if isinstance(raw, dict):  # short form: {label: description} or {label: {name, description}}
        raw = [
            {"label": label, **(value if isinstance(value, dict) else {"description": value})}
            for label, value in raw.items()
        ]
    if not isinstance(raw, list) or not raw:
        raise DataFormatError(f"{source}: field 'types' must be a non-empty list or mapping of types")
    types, seen_labels, seen_names = [], set(), set()
    for index, item in enumerate(raw):
        where = f"{source}: field 'types[{index}]'"
        if not isinstance(item, dict):
            raise DataFormatError(f"{where} must be a mapping with label, name and description")
        label = str(item.get("label", "")).strip()
        if not label or any(ch.isspace() for ch in label):
            raise DataFormatError(f"{where}.label must be a non-empty tag type without spaces")
        name = str(item.get("name") or label).strip()
        description = item.get("description")
        if not isinstance(description, str) or not description.strip():
            raise DataFormatError(f"{where}.description is missing for type {label!r}; the instruction needs it")
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
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataFormatError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict) or "types" not in data:
        raise DataFormatError(f"{path}: expected a mapping with a 'types' field")
    return _parse_types(data["types"], str(path))


def merge_types(base: Iterable[EntityType], override: Iterable[EntityType]) -> list[EntityType]:
    """Types of `base` with those of `override` replacing them by label; new labels are appended in order."""
    merged = {t.label: t for t in base}
    for entity_type in override:
        merged[entity_type.label] = entity_type
    return list(merged.values())


def _builtin_types(key: str) -> list[EntityType]:
    text = resources.files("cllmfs_trainer.data").joinpath("types", f"{key}.yaml").read_text(encoding="utf-8")
    return _parse_types(yaml.safe_load(text)["types"], f"cllmfs_trainer/data/types/{key}.yaml")


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
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(dataset_keys())} (or pass a types file)")
    if key not in _cache:
        _cache[key] = DatasetInfo(key=key, types=_builtin_types(key), **_ENTRIES[key])
    info = _cache[key]
    if types_file is None:
        return info
    return DatasetInfo(**{**info.__dict__, "types": merge_types(info.types, load_types_file(types_file))})
