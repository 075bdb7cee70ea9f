"""The run folder: what a training writes and what prediction, scoring and the benchmark read.

This module is the only place that knows the folder's file names. A run folder holds:

    cllmfs_run.json     `RunFolder` below: base model, weights kind, the `PromptFormat`, types, training facts
    decoding_config.json    `DecodingConfig`: prediction's defaults (end penalty, one type per span)
    support.txt (+ .json)   the support set it was trained on (BIO, with its sampling sidecar)
    adapter_config.json, adapter_model.safetensors   the LoRA adapter (weights="adapter")
    config.json, model.safetensors (or shards)       the whole model (weights="full", e.g. `use_peft: false`)
    tokenizer files, train_results.json, metrics.json (written by `cllmfs evaluate`)

`RunFolder.load` refuses a folder whose record is missing, corrupt or incomplete, or whose weights are not there,
naming the file and field, so prediction never silently falls back to an untrained base model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cllmfs_trainer.data.format import ANSWER_FORMAT, ANSWER_FORMATS, PromptFormat
from cllmfs_trainer.data.registry import EntityType
from cllmfs_trainer.decoding_config import DecodingConfig
from cllmfs_trainer.errors import DataFormatError, UserError
from cllmfs_trainer.files import atomic_write_text
from cllmfs_trainer.parsing import read_json_file

RUN_FILE = "cllmfs_run.json"
SUPPORT_FILE = "support.txt"
METRICS_FILE = "metrics.json"
# Prediction's defaults sit in their own file, as transformers keeps `generation_config.json` apart from the model's
# config; records written before it held them as fields of their own, which `load` still reads.
DECODING_FILE = "decoding_config.json"
DECODING_FIELDS = ("end_penalty", "one_type_per_span")
# Bump when a field's meaning changes; `load` reads every older version it knows how to upgrade. Version 2 stores the
# prompt format, answer format and type descriptions as one value, `format`; version 1 had them as three fields.
FORMAT_VERSION = 2
FORMAT_FIELDS = ("prompt_format", "answer_format", "type_descriptions")
# The files each kind of weights needs (any one of a tuple's alternatives).
WEIGHT_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "adapter": (("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin")),
    "full": (("config.json",), ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")),
}
# A saved tokenizer has its config and at least one vocabulary file (fast, SentencePiece or BPE/WordPiece).
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer_config.json",),
    ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model"),
)


class RunFolderError(UserError):
    """A run folder that cannot be used, with the file and field at fault in the message."""


@dataclass
class RunFolder:
    """The record of a trained run (`cllmfs_run.json`) and the folder it lives in.

    Args:
        path (`Path`):
            The run folder.
        base_model (`str`):
            Model reference the weights apply to (`default`, a folder, a `.gguf` or a hub id).
        weights (`str`):
            `adapter` (a LoRA adapter over `base_model`) or `full` (the whole model is in the folder).
        prompt_format (`int`):
            The SFT prompt format (1: instruction first, 2: sentence first).
        setting (`str`):
            `intra` or `inter`.
        dataset (`str`):
            Registry key of the dataset the support set came from.
        k (`int`):
            Shots per type of the support set.
        train_types (`list[EntityType]`):
            Types the model was trained on.
        test_types (`list[EntityType]`):
            Types prediction asks for by default (an INTER run: the target's).
        answer_format (`str`, *optional*, defaults to `"marked"`):
            The SFT answer format (`marked`: ` <<< X >>>` groups, `pointer`: ` X >>>`).
        type_descriptions (`bool`, *optional*, defaults to `True`):
            Whether the instructions gave each type's description (the paper) or its name alone; prediction builds
            its prompts the same way.
        end_penalty (`float`, *optional*, defaults to `0.0`):
            The prediction threshold the recipe chose on dev (`EntityExtractor`'s `end_penalty`); prediction uses it
            unless told otherwise. Saved in `decoding_config.json`.
        one_type_per_span (`bool`, *optional*, defaults to `False`):
            Whether prediction keeps one type per span (`EntityExtractor`'s `one_type_per_span`), as the recipe chose.
            Saved in `decoding_config.json`.
        cl_layer (`int`, *optional*):
            Layer of the contrastive term, resolved for the model's depth.
        world_size (`int`, *optional*, defaults to `1`):
            Processes that trained it.
        distributed_type (`str`, *optional*, defaults to `"NO"`):
            accelerate's distributed type that really ran (`NO`, `MULTI_CPU`, `DEEPSPEED`, ...).
        extra (`dict`, *optional*, defaults to `{}`):
            Facts added after training (`train_seconds`, `resumed_from_step`, `support_fit`, ...).
        format_version (`int`, *optional*, defaults to `FORMAT_VERSION`):
            Version of this record's format.
    """

    path: Path
    base_model: str
    weights: str
    prompt_format: int
    setting: str
    dataset: str
    k: int
    train_types: list[EntityType]
    test_types: list[EntityType]
    answer_format: str = ANSWER_FORMAT
    type_descriptions: bool = True
    end_penalty: float = 0.0
    one_type_per_span: bool = False
    cl_layer: int | None = None
    world_size: int = 1
    distributed_type: str = "NO"
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.weights not in WEIGHT_FILES:
            raise RunFolderError(
                f"{self.run_file}: weights must be one of {sorted(WEIGHT_FILES)}, got {self.weights!r}"
            )

    # --- file names -------------------------------------------------------------------------------------------------

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def support_file(self) -> Path:
        return self.path / SUPPORT_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def decoding_file(self) -> Path:
        return self.path / DECODING_FILE

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether `path` holds a run record (complete or not: `load` checks the rest)."""
        return (Path(path) / RUN_FILE).is_file()

    # --- reading and writing ----------------------------------------------------------------------------------------

    @property
    def format(self) -> PromptFormat:
        """How the run's prompts were written and its answers are read: one value, `format` in `cllmfs_run.json`."""
        return PromptFormat(self.prompt_format, self.answer_format, self.type_descriptions)

    @property
    def decoding(self) -> DecodingConfig:
        """Prediction's defaults: `decoding_config.json`."""
        return DecodingConfig(self.end_penalty, self.one_type_per_span)

    def save(self) -> Path:
        """Write `decoding_config.json`, then `cllmfs_run.json`, each atomically (a temporary file, then a rename);
        returns the record's path."""
        decoding = asdict(self.decoding)  # checked before anything is written
        skipped = ("path", "extra", *FORMAT_FIELDS, *DECODING_FIELDS)
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
        record["format"] = self.format.to_dict()
        record["train_types"] = [asdict(t) for t in self.train_types]
        record["test_types"] = [asdict(t) for t in self.test_types]
        record.update(self.extra)
        self.path.mkdir(parents=True, exist_ok=True)
        # The record last: a folder that `exists` has its decoding defaults too.
        atomic_write_text(self.decoding_file, json.dumps(decoding, indent=2) + "\n")
        atomic_write_text(self.run_file, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return self.run_file

    def update(self, **extra: Any) -> None:
        """Add facts to `extra` and save."""
        self.extra.update(extra)
        self.save()

    @classmethod
    def load(cls, path: str | os.PathLike, check_weights: bool = True) -> RunFolder:
        """Read and validate a run folder.

        Args:
            path (`str` or `os.PathLike`):
                The run folder.
            check_weights (`bool`, *optional*, defaults to `True`):
                Also check that the weights files are there.

        Raises:
            `RunFolderError`: naming the folder, file or field: not a run folder, unreadable or corrupt JSON, a missing
                or mistyped field, or missing weights.
        """
        folder = Path(path)
        run_file = folder / RUN_FILE
        if folder.exists() and not folder.is_dir():
            raise RunFolderError(f"{folder} is a file; expected a run folder written by recipes/train.py")
        if not folder.is_dir():
            raise RunFolderError(f"{folder}: no such run folder")
        if not run_file.is_file():
            raise RunFolderError(f"{folder} is not a cllmfs run folder: {RUN_FILE} is missing")
        try:
            record = read_json_file(run_file, "run record")
        except DataFormatError as err:  # not UTF-8, not JSON, a key given twice: the same class as the other checks
            raise RunFolderError(f"the run record is damaged: {err}") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{run_file}: expected a JSON object, got {type(record).__name__}")
        record.setdefault("format_version", 0)
        if not isinstance(record["format_version"], int) or isinstance(record["format_version"], bool):
            raise RunFolderError(f"{run_file}: field 'format_version' must be int, got {record['format_version']!r}")
        if record["format_version"] < 0:
            raise RunFolderError(f"{run_file}: field 'format_version' must be >= 0, got {record['format_version']}")
        if record["format_version"] > FORMAT_VERSION:
            raise RunFolderError(
                f"{run_file}: format_version {record['format_version']} is newer than this "
                f"cllmfs-trainer reads ({FORMAT_VERSION}); upgrade cllmfs-trainer"
            )
        if "weights" not in record:  # records before format 1 did not say; the files do
            record["weights"] = "adapter" if (folder / "adapter_config.json").is_file() else "full"
        if "format" in record:  # format 2: one value
            _unpack_format(record, run_file)
        record.setdefault("prompt_format", 1)  # runs before prompt format 2 had no choice
        record.setdefault("answer_format", ANSWER_FORMAT)  # nor before the pointer answer format
        record["format_version"] = FORMAT_VERSION
        known = {f.name for f in fields(cls)} - {"path", "extra"}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - {"path"}
        missing = sorted(required - set(record))
        if missing:
            raise RunFolderError(f"{run_file}: missing field(s) {missing}")
        for name in ("train_types", "test_types"):
            record[name] = _types(record[name], run_file, name)
        strings = ("base_model", "dataset", "weights", "setting")
        for name, kind in (("prompt_format", int), ("k", int), *((name, str) for name in strings)):
            if not isinstance(record[name], kind) or isinstance(record[name], bool):
                raise RunFolderError(f"{run_file}: field {name!r} must be {kind.__name__}, got {record[name]!r}")
        if record["k"] < 0:  # 0: a run with no shots of its types (the NER prior)
            raise RunFolderError(f"{run_file}: field 'k' must be >= 0, got {record['k']}")
        if record["answer_format"] not in ANSWER_FORMATS:
            raise RunFolderError(
                f"{run_file}: field 'answer_format' must be one of {list(ANSWER_FORMATS)}, "
                f"got {record['answer_format']!r}"
            )
        if not isinstance(record.setdefault("type_descriptions", True), bool):  # runs before the choice had them
            raise RunFolderError(
                f"{run_file}: field 'type_descriptions' must be true or false, got {record['type_descriptions']!r}"
            )
        record.update(_decoding(folder, record, run_file))
        run = cls(
            path=folder,
            **{k: v for k, v in record.items() if k in known},
            extra={k: v for k, v in record.items() if k not in known},
        )
        if check_weights:
            run.check_weights()
        return run

    def check_tokenizer(self) -> None:
        """Raise `RunFolderError` naming the tokenizer file that is missing (prediction loads the run's tokenizer)."""
        for alternatives in TOKENIZER_FILES:
            if not any((self.path / name).is_file() for name in alternatives):
                raise RunFolderError(
                    f"{self.path}: the tokenizer is incomplete, {' / '.join(alternatives)} is missing; copy the "
                    "tokenizer files of the base model into the run folder"
                )
        for name in ("tokenizer_config.json", "tokenizer.json"):
            if (self.path / name).is_file():
                _json_object(self.path / name, "the tokenizer")

    def check_weights(self) -> None:
        """Raise `RunFolderError` naming the first weights file that is missing, a run that made no optimizer step,
        or an adapter whose safetensors file is corrupt or holds NaN or infinite weights (a diverged training)."""
        for alternatives in WEIGHT_FILES[self.weights]:
            if not any((self.path / name).is_file() for name in alternatives):
                raise RunFolderError(
                    f"{self.path}: weights={self.weights!r} but {' / '.join(alternatives)} is "
                    "missing; the run folder is incomplete (was the training interrupted?)"
                )
        steps = self.extra.get("train_steps")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise RunFolderError(
                f"{self.run_file}: train_steps is {steps!r}: the run was never trained; train it again"
            )
        adapter = self.path / "adapter_model.safetensors"
        if self.weights == "adapter":
            config = _json_object(self.path / "adapter_config.json", "the adapter")
            if config.get("peft_type") != "LORA":
                raise RunFolderError(
                    f"{self.path / 'adapter_config.json'}: peft_type is {config.get('peft_type')!r}, not LORA; "
                    "the run folder holds a foreign adapter"
                )
            if adapter.is_file():
                check_finite_safetensors(adapter)


def _json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`, or a `RunFolderError` naming the file for anything else (truncated, not UTF-8)."""
    try:
        value = read_json_file(path, what)
    except DataFormatError as err:
        raise RunFolderError(f"{err}: {what} file is damaged, the run folder cannot load") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path}: {what} file holds {type(value).__name__}, not a JSON object")
    return value


def _decoding(folder: Path, record: dict[str, Any], run_file: Path) -> dict[str, Any]:
    """The run's decoding defaults, checked: `decoding_config.json`, else the fields of a record written before that
    file (popped from `record`), else the defaults (prediction options off)."""
    path = folder / DECODING_FILE
    inline = {name: record.pop(name) for name in DECODING_FIELDS if name in record}
    if not path.exists():
        values, source = inline, run_file
    elif inline:  # two places for one value: which one prediction should use would be a guess
        raise RunFolderError(
            f"{run_file}: field(s) {sorted(inline)} belong in {DECODING_FILE}, which the folder has; move them there"
        )
    else:
        values, source = _json_object(path, "the decoding config"), path
        unknown = sorted(set(values) - set(DECODING_FIELDS))
        if unknown:
            raise RunFolderError(f"{path}: unknown key(s) {unknown}; known: {list(DECODING_FIELDS)}")
    penalty = values.get("end_penalty", 0.0)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty):
        raise RunFolderError(f"{source}: field 'end_penalty' must be a finite number, got {penalty!r}")
    one = values.get("one_type_per_span", False)
    if not isinstance(one, bool):
        raise RunFolderError(f"{source}: field 'one_type_per_span' must be true or false, got {one!r}")
    return {"end_penalty": float(penalty), "one_type_per_span": one}


def _unpack_format(record: dict[str, Any], run_file: Path) -> None:
    """Spread the `format` value of a record into the fields `load` checks (the same as a format 1 record's)."""
    value = record.pop("format")
    if not isinstance(value, dict):
        raise RunFolderError(f"{run_file}: field 'format' must be an object, got {value!r}")
    unknown = sorted(set(value) - set(FORMAT_FIELDS))
    if unknown:
        raise RunFolderError(f"{run_file}: field 'format' has unknown key(s) {unknown}; known: {list(FORMAT_FIELDS)}")
    record.update(value)


def check_finite_safetensors(path: Path) -> None:
    """Raise `RunFolderError` for a safetensors file that cannot be read or holds NaN or infinite values.

    Reads every tensor: meant for adapters (megabytes), not for a full model's weights.
    """
    import torch  # deferred: reading a run record needs no torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            bad = [name for name in weights.keys() if not torch.isfinite(weights.get_tensor(name)).all()]
    except (SafetensorError, OSError, RuntimeError) as err:
        raise RunFolderError(f"{path}: not a readable safetensors file ({err}); the run folder is damaged") from None
    if bad:
        raise RunFolderError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); the training "
            "diverged: train again with a lower learning_rate"
        )


def _types(value: Any, run_file: Path, name: str) -> list[EntityType]:
    if not isinstance(value, list) or not value:
        raise RunFolderError(f"{run_file}: field {name!r} must be a non-empty list of types")
    types = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(item.get(key), str) for key in ("label", "name")):
            raise RunFolderError(f"{run_file}: {name}[{i}] must be an object with a string 'label' and 'name'")
        if not isinstance(item.get("description"), str):
            raise RunFolderError(f"{run_file}: {name}[{i}] must have a string 'description'")
        try:
            types.append(EntityType(**item))
        except TypeError as err:
            raise RunFolderError(f"{run_file}: {name}[{i}]: {err}") from None
        if any(t.label == item["label"] for t in types[:-1]):  # which description is meant would be a guess
            raise RunFolderError(f"{run_file}: {name}[{i}]: the label {item['label']!r} is given twice")
    return types
