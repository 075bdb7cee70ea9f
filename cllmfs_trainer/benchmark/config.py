"""What a benchmark runs: `BenchmarkConfig`, its `Unit`s, and the fingerprint a resumed or restored run must match.

A *task* is `intra:<dataset>` (support set from the dataset's train split, query from its test split) or
`inter:<dataset>` (support set from OntoNotes 5.0 train, all 18 types; query from the dataset's test split, with its
own types). All INTER tasks of one seed and K share one support set and therefore one trained model per method.

Building a config writes nothing anywhere: the methods its `settings` define are looked up with `method()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cllmfs_trainer.benchmark.methods import METHODS, Method, TrainedMethod, get_method
from cllmfs_trainer.data.registry import get_dataset
from cllmfs_trainer.data.sampling import INTER_SOURCE
from cllmfs_trainer.errors import MissingFileError, UserError
from cllmfs_trainer.files import read_text_file
from cllmfs_trainer.models.priors import adapter_sha256, resolve_init_adapter
from cllmfs_trainer.parsing import load_yaml

# Trains one run folder: (recipe, overrides for the recipe's keys, output_dir) -> None. `recipes/benchmark.py` passes
# the training script's parser and main, so the benchmark trains exactly as a user's `accelerate launch` does.
TrainFn = Callable[[str, dict[str, Any], Path], None]


@dataclass
class BenchmarkConfig:
    """What to run. Read from a flat YAML by `recipes/benchmark.py`.

    Args:
        output_dir (`str`):
            Where units, run folders and support sets go (see the module docstring).
        tasks (`list[str]`):
            `intra:<dataset>` or `inter:<dataset>` registry keys, e.g. `intra:wnut17`, `inter:conll2003`.
        methods (`list[str]`, *optional*):
            Names registered in `cllmfs_trainer.benchmark.methods` (`cllmfs`, `lora`, `lora_cl`, `cllmfs_format2`,
            `zero_shot`, `protobert`, `nnshot`, ...).
        seeds (`list[int]`, *optional*):
            Support-set seeds (the paper averages 5 runs).
        ks (`list[int]`, *optional*):
            Shots per type; several values give a K-shot curve.
        query_size (`int`, *optional*):
            Predict this many test sentences (a fixed random subset); `None` for the whole split.
        query_seed (`int`, *optional*, defaults to `0`):
            Seed of that subset, the same for every support seed.
        recipe (`str`, *optional*):
            Training recipe YAML for the trained methods (its dataset/support keys are set per unit).
        inter_recipe (`str`, *optional*):
            Training recipe for the INTER units' source-domain models (default: `recipe`). A source with many types
            and sentences wants another budget than a 5-shot support set, e.g. epochs instead of steps.
        train_overrides (`dict[str, Any]`, *optional*, defaults to `{}`):
            Recipe keys to override for every trained method (e.g. `max_steps`).
        model (`str`, *optional*, defaults to `"default"`):
            Base LLM for the trained methods and zero-shot prompting (`default` = SmolLM2-135M-Instruct).
        encoder (`str`, *optional*, defaults to `"minilm"`):
            Encoder of ProtoBERT/NNShot, and the one CONTaiNER/ProML start from (`minilm` = the offline
            all-MiniLM-L6-v2, or any HF encoder id).
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per generation batch.
        fit_on_support (`bool`, *optional*, defaults to `True`):
            Also predict the support set with each trained model and report that F1 (training fit).
        data_dir (`str`, *optional*):
            Folder of datasets that are not shipped (default `$CLLMFS_DATA_DIR`).
        checkpoint_steps (`int`, *optional*, defaults to `40`):
            Save a training's state (adapter, optimizer, scheduler, RNG) every this many steps, so that an interrupted
            training resumes from its last checkpoint instead of step 0; 0 turns it off. Not part of the fingerprint: a
            resumed training gives the model an uninterrupted one gives.
        query_split (`str`, *optional*, defaults to `"test"`):
            The split predicted and scored: `test` to report, `dev` to choose settings (a sweep).
        settings (`dict[str, dict[str, Any]]`, *optional*, defaults to `{}`):
            Extra trained methods, each a name and the recipe keys it overrides, e.g. `{lr_5e-4: {learning_rate:
            5.0e-4}}`: a sweep is a benchmark whose methods are settings. Add them to `methods`.
        reference (`str`, *optional*, defaults to `"cllmfs"`):
            The method `paired.md` compares every other one with, seed by seed.
        predict_dtype (`str`, *optional*):
            Precision of the LLM methods' predictions: `float32` or `bfloat16` (about twice as fast on CPUs with
            AVX512-BF16 or AMX); by default as the model loads (float32 on a CPU, bfloat16 on GPUs that support it).
            Fixed, not probed, so that a report means the same on every machine of a kind.
    """

    output_dir: str
    tasks: list[str]
    methods: list[str] = field(default_factory=lambda: ["cllmfs", "lora", "zero_shot", "protobert", "nnshot"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ks: list[int] = field(default_factory=lambda: [5])
    query_size: int | None = None
    query_seed: int = 0
    recipe: str | None = None
    inter_recipe: str | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)
    model: str = "default"
    encoder: str = "minilm"
    batch_size: int = 32
    fit_on_support: bool = True
    data_dir: str | None = None
    checkpoint_steps: int = 40
    query_split: str = "test"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = "cllmfs"
    predict_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.predict_dtype is not None and self.predict_dtype not in PREDICT_DTYPES:
            raise UserError(f"predict_dtype must be one of {list(PREDICT_DTYPES)}, got {self.predict_dtype!r}")
        if self.checkpoint_steps < 0:
            raise UserError(f"checkpoint_steps must be >= 0 (0 = no checkpoints), got {self.checkpoint_steps}")
        if self.query_split not in ("test", "dev"):
            raise UserError(f"query_split must be 'test' or 'dev', got {self.query_split!r}")
        for name, overrides in self.settings.items():
            if name in METHODS:
                raise UserError(f"setting {name!r} has the name of a method; rename it")
            if not isinstance(overrides, dict):
                raise UserError(f"setting {name!r}: expected a mapping of recipe keys to values, got {overrides!r}")
        for method in self.methods:
            self.method(method)  # raises with the known names
        for task in self.tasks:
            setting, _, dataset = task.partition(":")
            if setting not in ("intra", "inter") or not dataset:
                raise UserError(f"task {task!r} must be 'intra:<dataset>' or 'inter:<dataset>'")
            get_dataset(dataset)  # raises with the known keys
        if any(self.method(m).needs_recipe for m in self.methods) and not self.recipe:
            raise UserError("trained methods need `recipe`, a training YAML such as recipes/smollm2/wnut17_intra.yaml")
        if not self.seeds or not self.ks:
            raise UserError("seeds and ks must not be empty")
        if self.reference not in self.methods:
            self.reference = next(iter(self.methods))

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change results: a resumed run must agree on them (seeds, tasks, methods may grow)."""
        # The recipe is compared by its settings, not its path: a pinned copy of a recipe resumes the same run.
        keep = ("query_size", "query_seed", "train_overrides", "model", "encoder")
        fields = {key: getattr(self, key) for key in keep}
        # Only where they differ from the defaults, so that reports written before they existed still match.
        fields.update({key: getattr(self, key) for key in _DEFAULTS if getattr(self, key) != _DEFAULTS[key]})
        if self.recipe:
            # The recipe's settings, not its text: editing a comment must not invalidate finished units.
            fields["recipe_settings"] = _recipe_settings(read_text_file(self.recipe, "recipe"), self.recipe)
        if self.inter_recipe:
            fields["inter_recipe_settings"] = _recipe_settings(
                read_text_file(self.inter_recipe, "inter_recipe"), self.inter_recipe
            )
        # Registered methods' definitions, so that changing one in code cannot mix into finished units.
        definitions = {name: self.method(name).definition() for name in self.methods if name not in self.settings}
        definitions = {name: definition for name, definition in definitions.items() if definition}
        if definitions:
            fields["method_definitions"] = definitions
        adapters = self.init_adapters()
        if adapters:  # `init_adapter: prior` names the shipped prior: a retrained one must not mix into old units
            fields["init_adapters"] = {value: _adapter_digest(value, self.model) for value in adapters}
        return fields

    def init_adapters(self) -> list[str]:
        """The `init_adapter` values the methods start from (`prior`, adapter folders), in order, each once."""
        values = [self.train_overrides.get("init_adapter")]
        for name in self.methods:
            method = self.method(name)
            values += [getattr(method, "overrides", {}).get("init_adapter"), getattr(method, "adapter", None)]
        return list(dict.fromkeys(str(v) for v in values if v is not None))

    def method(self, name: str) -> Method:
        """The method called `name`: a trained method this config's `settings` define, or a registered one.

        Raises:
            `ValueError`: naming the known methods.
        """
        if name in self.settings:
            return TrainedMethod(name, name, overrides=dict(self.settings[name]))
        return get_method(name)

    def recipe_for(self, setting: str) -> str | None:
        """The training recipe of a unit's setting: `inter_recipe` for INTER units where one is given."""
        return self.inter_recipe if setting == "inter" and self.inter_recipe else self.recipe

    def query_note(self) -> str:
        """How the query was drawn, in words: written into reports and checked when units are restored from one."""
        if self.query_size:
            return f"{self.query_size} random {self.query_split} sentences (query_seed {self.query_seed}) per dataset"
        return f"the full {self.query_split} split"


_DEFAULTS = {"query_split": "test", "settings": {}, "predict_dtype": None}
PREDICT_DTYPES = ("float32", "bfloat16")


def _recipe_settings(text: str, source: str) -> dict[str, Any]:
    return load_yaml(text, source) or {}


def _adapter_digest(value: str, model: str | None) -> str | None:
    """The sha256 of the weights an `init_adapter` value names; `None` for a folder not made yet (a dev setting's)."""
    try:
        return adapter_sha256(resolve_init_adapter(value, model))
    except MissingFileError:
        return None


def changed_fields(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Fingerprint fields that differ. `settings` and `method_definitions` may grow like `methods`: only names defined
    in both must agree.

    `init_adapters` likewise: an adapter both name must have the same weights where both could read them. Reports
    written before the field existed do not have it, and are not compared on it.
    """
    changed = []
    for key in sorted(ours.keys() | theirs.keys()):  # a field only one side sets differs from its default
        if key in ("settings", "method_definitions"):
            mine, other = ours.get(key) or {}, theirs.get(key) or {}
            if any(mine[name] != other[name] for name in mine.keys() & other.keys()):
                changed.append(key)
        elif key == "init_adapters":
            mine, other = ours.get(key) or {}, theirs.get(key) or {}
            if any(None not in (mine[v], other[v]) and mine[v] != other[v] for v in mine.keys() & other.keys()):
                changed.append(key)
        elif theirs.get(key) != ours.get(key):
            changed.append(key)
    return changed


def upgrade_fingerprint(saved: dict[str, Any]) -> dict[str, Any]:
    """Older fingerprints held the recipe's path and raw text; compare those by the recipe's settings alone."""
    saved = dict(saved)
    saved.pop("recipe", None)
    if "recipe_text" in saved:
        saved["recipe_settings"] = _recipe_settings(saved.pop("recipe_text"), "the saved recipe_text")
    return saved


@dataclass
class Unit:
    """One (task, K, seed, method) cell of the benchmark."""

    setting: str
    dataset: str
    k: int
    seed: int
    method: str

    @property
    def source(self) -> str:
        """Where the support set comes from; trained models are shared by units with the same source.

        A prototype classifier (ProtoBERT, NNShot) can only label types it has examples of, so in INTER it takes the
        target's K-shot support set, as in the domain-transfer protocol of the literature. Its encoder is frozen and
        never sees the source, so its INTER figures equal its INTRA ones by construction. CONTaiNER and ProML take the
        target's support set too, but in INTER their encoder is first trained on OntoNotes (see `baselines`).
        """
        # Settings a config defines are trained methods, which never take the target's support set in INTER.
        method = METHODS.get(self.method)
        if self.setting == "intra" or (method is not None and method.uses_target_support):
            return self.dataset
        return INTER_SOURCE

    @property
    def task(self) -> str:
        return f"{self.setting}-{self.dataset}"
