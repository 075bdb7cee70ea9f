"""The few-shot benchmark protocol: tasks x K x seeds x methods, every unit saved as it finishes so runs resume.

A *task* is `intra:<dataset>` (support set from the dataset's train split, query from its test split) or
`inter:<dataset>` (support set from OntoNotes 5.0 train, all 18 types; query from the dataset's test split, with its
own types). All INTER tasks of one seed and K share one support set and therefore one trained model per method.

Every method of a (task, K, seed) sees the same support set and the same query, so differences between methods are
paired. The query is the full test split, or a fixed random subset (`query_size`, `query_seed`) that is the same for
every seed: seeds vary the support set only.

Layout of `output_dir` (nothing here is meant for git: it holds dataset sentences, whose licenses may forbid it):

    benchmark.json                              the config; a resumed run must match it
    support/<source>/k5/seed0.txt (+ .json)     support sets (source = the dataset, or `ontonotes5` for INTER)
    runs/<source>/k5/seed0/<method>/            trained run folders (`cllmfs_trainer.run_folder`)
    units/<setting>-<dataset>/k5/seed0/<method>.json   scores of one unit; its presence marks the unit done
    units/.../<method>.predictions.jsonl        predicted spans per query sentence (ids and offsets, no text)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

from cllmfs_trainer.baselines import load_encoder
from cllmfs_trainer.benchmark.methods import METHODS, Method, get_method, register_method
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType, get_dataset
from cllmfs_trainer.data.sampling import INTER_SOURCE, SupportSet, query_subset, sample_support_set
from cllmfs_trainer.evaluation.metrics import span_scores
from cllmfs_trainer.evaluation.scoring import score_unit
from cllmfs_trainer.files import atomic_write_text, load_yaml, read_text_file, replace_folder
from cllmfs_trainer.models import ensure_pad_token, load_model, load_tokenizer
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger(__name__)

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
            raise ValueError(f"predict_dtype must be one of {list(PREDICT_DTYPES)}, got {self.predict_dtype!r}")
        if self.checkpoint_steps < 0:
            raise ValueError(f"checkpoint_steps must be >= 0 (0 = no checkpoints), got {self.checkpoint_steps}")
        if self.query_split not in ("test", "dev"):
            raise ValueError(f"query_split must be 'test' or 'dev', got {self.query_split!r}")
        for name, overrides in self.settings.items():
            if name in METHODS and name not in _SETTING_NAMES:
                raise ValueError(f"setting {name!r} has the name of a method; rename it")
            if not isinstance(overrides, dict):
                raise ValueError(f"setting {name!r}: expected a mapping of recipe keys to values, got {overrides!r}")
            register_method(Method(name, name, "trained", dict(overrides)))
            _SETTING_NAMES.add(name)
        for method in self.methods:
            get_method(method)  # raises with the known names
        for task in self.tasks:
            setting, _, dataset = task.partition(":")
            if setting not in ("intra", "inter") or not dataset:
                raise ValueError(f"task {task!r} must be 'intra:<dataset>' or 'inter:<dataset>'")
            get_dataset(dataset)  # raises with the known keys
        if any(get_method(m).kind == "trained" for m in self.methods) and not self.recipe:
            raise ValueError("trained methods need `recipe`, a training YAML such as recipes/smollm2/wnut17_intra.yaml")
        if not self.seeds or not self.ks:
            raise ValueError("seeds and ks must not be empty")
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
        return fields

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
_SETTING_NAMES: set[str] = set()  # methods registered from `settings`, which a later config may redefine


def _recipe_settings(text: str, source: str) -> dict[str, Any]:
    return load_yaml(text, source) or {}


def _changed_fields(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Fingerprint fields that differ. `settings` may grow like `methods`: only names defined in both must agree."""
    changed = []
    for key in sorted(ours.keys() | theirs.keys()):  # a field only one side sets differs from its default
        if key == "settings":
            mine, other = ours[key] or {}, theirs.get(key) or {}
            if any(mine[name] != other[name] for name in mine.keys() & other.keys()):
                changed.append(key)
        elif theirs.get(key) != ours.get(key):
            changed.append(key)
    return changed


def _upgrade_fingerprint(saved: dict[str, Any]) -> dict[str, Any]:
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
        if self.setting == "intra" or get_method(self.method).uses_target_support:
            return self.dataset
        return INTER_SOURCE

    @property
    def task(self) -> str:
        return f"{self.setting}-{self.dataset}"


class Benchmark:
    """Runs a `BenchmarkConfig`, unit by unit, skipping units whose scores already exist.

    Args:
        config (`BenchmarkConfig`):
            The benchmark.
        train_fn (`TrainFn`, *optional*):
            How to train a run folder (see `TrainFn`); needed only for trained methods.
        overwrite (`bool`, *optional*, defaults to `False`):
            Start over when `output_dir` holds a run with a different config, instead of raising.
    """

    def __init__(self, config: BenchmarkConfig, train_fn: TrainFn | None = None, overwrite: bool = False) -> None:
        self.config = config
        self.train_fn = train_fn
        self.overwrite = overwrite
        self.root = Path(config.output_dir)
        self._prepared = False
        self._queries: dict[str, list[Sentence]] = {}
        self._encoder = None

    def prepare(self) -> None:
        """Check `output_dir` against this config and claim it; the first thing `run` and `restore_from` do.

        A folder holding a run with other settings is an error, unless `overwrite` was given: then it is emptied.
        """
        if self._prepared:
            return
        self._check_resume(self.overwrite)
        self._prepared = True

    def finished_records(self) -> list[dict[str, Any]]:
        """Scores of the units that are done, without running or writing anything (for `--report-only`)."""
        return [json.loads(p.read_text(encoding="utf-8")) for u in self.units() if (p := self.unit_path(u)).is_file()]

    def _check_resume(self, overwrite: bool) -> None:
        saved = self.root / "benchmark.json"
        current = {"config": asdict(self.config), "fingerprint": self.config.fingerprint()}
        if saved.is_file():
            previous = json.loads(saved.read_text(encoding="utf-8"))
            previous["fingerprint"] = _upgrade_fingerprint(previous.get("fingerprint", {}))
            changed = _changed_fields(previous["fingerprint"], current["fingerprint"])
            if changed:
                if not overwrite:
                    raise ValueError(
                        f"{self.root} holds a benchmark run with different settings ({', '.join(changed)})"
                        "; resume with the same ones, pick another output_dir, or pass --overwrite"
                    )
                shutil.rmtree(self.root)
            elif previous["fingerprint"].get("settings"):
                # Keep the definitions of settings this config leaves out: their finished units stay on disk.
                merged = {**previous["fingerprint"]["settings"], **current["fingerprint"].get("settings", {})}
                current["fingerprint"]["settings"] = merged
        self.root.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")

    def units(self) -> list[Unit]:
        """All units, grouped so that one trained model serves all its targets before the next is trained."""
        cfg = self.config
        tasks = [t.split(":", 1) for t in cfg.tasks]
        return [
            Unit(setting, dataset, k, seed, method)
            for seed in cfg.seeds
            for k in cfg.ks
            for method in cfg.methods
            for setting, dataset in tasks
        ]

    def unit_path(self, unit: Unit) -> Path:
        return self.root / "units" / unit.task / f"k{unit.k}" / f"seed{unit.seed}" / f"{unit.method}.json"

    def run(
        self, progress: bool = True, on_unit: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Run every unit not done yet; returns the scores of all units (done before or now).

        Args:
            progress (`bool`, *optional*, defaults to `True`):
                Show a progress bar.
            on_unit (`Callable[[dict], None]`, *optional*):
                Called with each new unit's record once it is saved (the script rewrites the report there, so that
                a long run cut off at any point leaves a report of every unit it finished).
        """
        from tqdm.auto import tqdm

        self.prepare()
        units = self.units()
        todo = [u for u in units if not self.unit_path(u).is_file()]
        logger.info("benchmark: %d units, %d done, %d to run", len(units), len(units) - len(todo), len(todo))
        bar = tqdm(todo, desc="benchmark", unit="unit", disable=not progress)
        for unit in bar:
            bar.set_postfix_str(f"{unit.task} k{unit.k} seed{unit.seed} {unit.method}")
            record = self.run_unit(unit)
            if on_unit is not None:
                on_unit(record)
        return [json.loads(self.unit_path(u).read_text(encoding="utf-8")) for u in units]

    def restore_from(self, results: str | Path) -> int:
        """Mark units done from a report's `results.json`, e.g. a committed report on a fresh clone; returns how many.

        Only units of this config that are not done yet are written, each with `restored_from` naming the report.
        A report holds scores, not predictions, so a restored unit has no predictions file. The report must come from
        a benchmark with the same settings: its fingerprint is compared where it has one (reports written before the
        fingerprint was saved are checked on model and query only, with a warning).

        Args:
            results (`str` or `Path`):
                Path of a `results.json` written by `write_report`.
        """
        self.prepare()
        path = Path(results)
        report = json.loads(path.read_text(encoding="utf-8"))
        cfg = self.config
        for key, ours in (("model", cfg.model), ("query", cfg.query_note())):
            if report.get(key) != ours:
                raise ValueError(f"{path}: its {key} is {report.get(key)!r}, this benchmark's is {ours!r}")
        if "fingerprint" in report:
            theirs, ours = _upgrade_fingerprint(report["fingerprint"]), cfg.fingerprint()
            changed = _changed_fields(theirs, ours)
            if changed:
                raise ValueError(f"{path} comes from a benchmark with different settings ({', '.join(changed)})")
        else:
            logger.warning(
                "%s has no fingerprint (an older report): only its model and query were checked, not the "
                "recipe, overrides or encoder",
                path,
            )
        wanted = {astuple(u) for u in self.units()}
        restored = 0
        for record in report.get("units", []):
            try:
                unit = Unit(*(record[f] for f in ("setting", "dataset", "k", "seed", "method")))
            except KeyError as missing:
                raise ValueError(f"{path}: a unit record lacks the field {missing}") from None
            if astuple(unit) not in wanted or self.unit_path(unit).is_file():
                continue
            target = self.unit_path(unit)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                target, json.dumps({**record, "restored_from": str(path)}, indent=2, ensure_ascii=False) + "\n"
            )
            restored += 1
        logger.info("benchmark: restored %d units from %s", restored, path)
        return restored

    # --- data -------------------------------------------------------------------------------------------------------

    def query(self, dataset: str) -> list[Sentence]:
        """The query sentences of a dataset's test split: all, or the fixed `query_size` subset."""
        if dataset not in self._queries:
            full = get_dataset(dataset).load(self.config.query_split, self.config.data_dir).sentences
            self._queries[dataset] = query_subset(full, self.config.query_size, self.config.query_seed)
        return self._queries[dataset]

    def support(self, unit: Unit) -> SupportSet:
        """The support set of a unit's source, sampled once and saved; never overlapping any query of the run."""
        path = self.root / "support" / unit.source / f"k{unit.k}" / f"seed{unit.seed}.txt"
        if path.is_file():
            return SupportSet.load(path)
        source = get_dataset(unit.source)
        pool = source.load("train", self.config.data_dir)
        # Exclude every query of the run, so an INTER support set is the same whichever targets come first.
        exclude = [s for task in self.config.tasks for s in self.query(task.split(":", 1)[1])]
        support = sample_support_set(
            pool.sentences, unit.k, [t.label for t in source.types], unit.seed, exclude=exclude, source=pool.source
        )
        support.save(path)
        return support

    def encoder(self):
        """The frozen encoder of the prototype baselines, loaded once per run."""
        if self._encoder is None:
            self._encoder = load_encoder(self.config.encoder)
        return self._encoder

    def types(self, unit: Unit) -> tuple[list[EntityType], list[EntityType]]:
        """(train types, test types) of a unit."""
        source, target = get_dataset(unit.source), get_dataset(unit.dataset)
        return list(source.types), list(target.types)

    # --- methods ----------------------------------------------------------------------------------------------------

    def run_unit(self, unit: Unit) -> dict[str, Any]:
        """Predict a unit's query (training first if needed) and save its scores."""
        support = self.support(unit)
        query = self.query(unit.dataset)
        train_types, test_types = self.types(unit)
        method = get_method(unit.method)
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        if method.kind == "trained":
            run_dir = self.train(unit, support)
            extractor = self._extractor(run_dir=run_dir, types=test_types)
            predicted = [p.spans for p in extractor.predict(query)]
            extra["parse_stats"] = extractor.stats.as_dict()
            extra["train_seconds"] = RunFolder.load(run_dir).extra.get("train_seconds")
            if (self.config.fit_on_support and unit.setting == "intra") or self._first_target(unit):
                extra["support_fit"] = self._support_fit(run_dir, support, train_types)
        elif method.kind == "zero_shot" and (done := self._zero_shot_done(unit)) is not None:
            # Zero-shot prompting never sees a support set or the source: every seed, K and setting of a dataset
            # gives the same predictions.
            record = {
                **json.loads(done.read_text(encoding="utf-8")),
                "setting": unit.setting,
                "support_sentences": len(support.sentences),
                "seed": unit.seed,
                "k": unit.k,
                "reused_from": str(done.relative_to(self.root)),
            }
            predictions = done.with_suffix(".predictions.jsonl").read_text(encoding="utf-8")
            self._write(unit, record, predictions)
            return record
        elif method.kind == "zero_shot":
            extractor = self._extractor(run_dir=None, types=test_types)
            predicted = [p.spans for p in extractor.predict(query)]
            extra["parse_stats"] = extractor.stats.as_dict()
        else:
            predicted, extra = method.fit_predict(self, unit, support.sentences, query, test_types)
        seconds = time.perf_counter() - start
        record = {
            **asdict(unit),
            "query_size": len(query),
            "support_sentences": len(support.sentences),
            "seconds": round(seconds, 1),
            **score_unit(query, predicted),
            **extra,
        }
        self._save(unit, record, query, predicted)
        return record

    def _first_target(self, unit: Unit) -> bool:
        """INTER units share a model: measure its support fit once, with the first INTER target."""
        if not self.config.fit_on_support or unit.setting != "inter":
            return False
        return next(t for t in self.config.tasks if t.startswith("inter:")) == f"inter:{unit.dataset}"

    def train(self, unit: Unit, support: SupportSet) -> Path:
        """The unit's trained run folder, trained now unless a finished one exists (shared by INTER targets)."""
        run_dir = self.root / "runs" / unit.source / f"k{unit.k}" / f"seed{unit.seed}" / unit.method
        if RunFolder.exists(run_dir):
            return run_dir
        if self.train_fn is None:
            raise ValueError(f"method {unit.method!r} needs training, but the benchmark was given no train_fn")
        support_path = self.root / "support" / unit.source / f"k{unit.k}" / f"seed{unit.seed}.txt"
        overrides = {
            **self.config.train_overrides,
            **get_method(unit.method).overrides,
            "dataset": unit.source,
            "setting": "intra",
            "k": unit.k,
            "support_set": str(support_path),
            "support_seed": unit.seed,
            "seed": unit.seed,
            "model_name_or_path": self.config.model,
        }
        if self.config.data_dir:
            overrides["data_dir"] = self.config.data_dir
        partial = run_dir.with_name(run_dir.name + ".partial")
        checkpoint = self._last_checkpoint(partial)
        if checkpoint is None:
            shutil.rmtree(partial, ignore_errors=True)
        if self.config.checkpoint_steps:
            overrides.update(save_strategy="steps", save_steps=self.config.checkpoint_steps, save_total_limit=1)
        if checkpoint is not None:
            overrides["resume_from_checkpoint"] = str(checkpoint)
            logger.info("resuming %s from %s", run_dir, checkpoint.name)
        start = time.perf_counter()
        self.train_fn(self.config.recipe_for(unit.setting), overrides, partial)
        for stale in partial.glob("checkpoint-*"):  # only an unfinished training needs them
            shutil.rmtree(stale)
        # Seconds of the last attempt only; it trained the steps after `resumed_from_step`.
        RunFolder.load(partial).update(
            train_seconds=round(time.perf_counter() - start, 1),
            resumed_from_step=int(checkpoint.name.split("-")[1]) if checkpoint else 0,
        )
        replace_folder(partial, run_dir)  # a run folder exists only once complete
        return run_dir

    def _last_checkpoint(self, partial: Path) -> Path | None:
        """The newest complete checkpoint of an interrupted training, if checkpoints are on."""
        if not self.config.checkpoint_steps or not partial.is_dir():
            return None
        steps = {int(p.name.split("-")[1]): p for p in partial.glob("checkpoint-*") if p.name.split("-")[1].isdigit()}
        # Trainer writes trainer_state.json last: a checkpoint without it was cut off while being saved.
        complete = [steps[n] for n in sorted(steps, reverse=True) if (steps[n] / "trainer_state.json").is_file()]
        return complete[0] if complete else None

    def _extractor(self, run_dir: Path | None, types: Sequence[EntityType]):
        # Heavy (torch and transformers): restoring a report and scoring saved predictions need neither.
        from cllmfs_trainer.inference.generate import EntityExtractor

        if run_dir is not None:
            return EntityExtractor.from_run(
                run_dir, types=types, batch_size=self.config.batch_size, dtype=self.config.predict_dtype
            )
        tokenizer = ensure_pad_token(load_tokenizer(self.config.model, padding_side="left"))
        model = load_model(self.config.model, dtype=self.config.predict_dtype)
        return EntityExtractor(model, tokenizer, types, batch_size=self.config.batch_size)

    def _support_fit(self, run_dir: Path, support: SupportSet, train_types: list[EntityType]) -> dict[str, float]:
        """Span scores of the trained model on its own support set: did it at least learn what it was shown?"""
        extractor = self._extractor(run_dir=run_dir, types=train_types)
        predicted = [p.spans for p in extractor.predict(support.sentences)]
        scores = span_scores([s.spans for s in support.sentences], predicted)
        return {key: scores[key] for key in ("precision", "recall", "f1")}

    def _zero_shot_done(self, unit: Unit) -> Path | None:
        """A finished zero-shot unit of the same dataset under another seed, K or setting (INTRA/INTER), if any."""
        # Search output_dir, not only this run's units: a run narrowed by --seeds, --ks or --tasks still reuses the
        # units other runs left there (one fingerprint covers the folder, so they were made with the same settings).
        own = self.unit_path(unit)
        for setting in ("intra", "inter"):
            task_dir = self.root / "units" / replace(unit, setting=setting).task
            for path in sorted(task_dir.glob(f"k*/seed*/{unit.method}.json")):
                # Reuse only a unit that predicted for itself: a reused or restored one may lack its predictions.
                if (
                    path != own
                    and path.with_suffix(".predictions.jsonl").is_file()
                    and "reused_from" not in json.loads(path.read_text(encoding="utf-8"))
                ):
                    return path
        return None

    def _save(self, unit: Unit, record: dict[str, Any], query: list[Sentence], predicted: list[list[Span]]) -> None:
        lines = [
            json.dumps({"id": s.id, "spans": [list(span) for span in spans]}, ensure_ascii=False)
            for s, spans in zip(query, predicted)
        ]
        self._write(unit, record, "\n".join(lines) + "\n")

    def _write(self, unit: Unit, record: dict[str, Any], predictions: str) -> None:
        path = self.unit_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".predictions.jsonl").write_text(predictions, encoding="utf-8")
        # The scores file appears atomically, and only after the predictions.
        atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
