"""The benchmark run: tasks x K x seeds x methods, every unit saved as it finishes so runs resume.

Every method of a (task, K, seed) sees the same support set and the same query, so differences between methods are
paired. The query is the full test split, or a fixed random subset (`query_size`, `query_seed`) that is the same for
every seed: seeds vary the support set only. Where everything goes is `cllmfs_trainer.benchmark.layout`; checking a
folder before resuming it, and restoring units from a report, is `cllmfs_trainer.benchmark.resume`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cllmfs_trainer.benchmark.baselines import load_encoder
from cllmfs_trainer.benchmark.baselines.context import BaselineContext
from cllmfs_trainer.benchmark.config import BenchmarkConfig, TrainFn, Unit
from cllmfs_trainer.benchmark.layout import BenchmarkLayout, read_record
from cllmfs_trainer.benchmark.methods import DECODING_KEYS
from cllmfs_trainer.benchmark.resume import check_resume, restore_units
from cllmfs_trainer.data.io import Sentence, Span
from cllmfs_trainer.data.registry import EntityType, get_dataset
from cllmfs_trainer.data.sampling import INTER_SOURCE, SupportSet, query_subset, sample_support_set
from cllmfs_trainer.evaluation.metrics import span_scores
from cllmfs_trainer.evaluation.scoring import score_unit
from cllmfs_trainer.files import atomic_write_text, replace_folder
from cllmfs_trainer.locks import hold_lock
from cllmfs_trainer.models import ensure_pad_token, load_model, load_tokenizer
from cllmfs_trainer.models.precision import check_bf16_not_emulated
from cllmfs_trainer.models.priors import resolve_init_adapter
from cllmfs_trainer.run_folder import RunFolder

logger = logging.getLogger(__name__)

# The recipe keys that shape prompts and decoding: an extractor built outside a run folder takes them from the recipe.


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
        self.layout = BenchmarkLayout(Path(config.output_dir))
        self.root = self.layout.root
        self._prepared = False
        self._queries: dict[str, list[Sentence]] = {}
        self._encoder = None

    def prepare(self) -> None:
        """Check `output_dir` against this config and claim it; the first thing `run` and `restore_from` do.

        A folder holding a run with other settings is an error, unless `overwrite` was given: then it is emptied.
        """
        if not self._prepared:
            with hold_lock(self.layout.lock_file("benchmark.json")):  # processes started together
                check_resume(self.config, self.layout, self.overwrite)
            self._prepared = True

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
        """The scores file of a unit (see `BenchmarkLayout.unit_file`)."""
        return self.layout.unit_file(unit)

    def finished_records(self) -> list[dict[str, Any]]:
        """Scores of the units that are done, without running or writing anything (for `--report-only`)."""
        return [read_record(p, "a unit's scores file") for u in self.units() if (p := self.unit_path(u)).is_file()]

    def run(
        self, progress: bool = True, on_unit: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Run every unit not done yet; returns the scores of the units that are done (before or now).

        Several processes may run one benchmark at once (the same command started N times, e.g. one thread each on an
        N-core CPU): a process runs a unit only while it holds the unit's lock (`BenchmarkLayout.unit_lock`), so the
        units that share a trained model or a zero-shot prediction are computed once. A unit held by another process
        is left to it; when only such units remain, the process stops and says how many.

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
        if todo and self.config.predict_dtype == "bfloat16":
            # Before any training: an emulated bfloat16 turns minutes of prediction into hours.
            check_bf16_not_emulated("predict_dtype")
        bar = tqdm(total=len(todo), desc="benchmark", unit="unit", disable=not progress)
        while todo:
            # One pass over the units left; a unit whose lock another process holds is retried on the next pass,
            # which ends the run if this one ran nothing (everything left is another process's).
            ran = False
            for unit in todo:
                method = self.config.method(unit.method)
                with hold_lock(self.layout.unit_lock(unit, method.same_for_every_seed), wait=False) as held:
                    if not held or self.unit_path(unit).is_file():  # another process's, or finished by it meanwhile
                        continue
                    bar.set_postfix_str(f"{unit.task} k{unit.k} seed{unit.seed} {unit.method}")
                    record = self.run_unit(unit)
                ran = True
                bar.update()
                if on_unit is not None:
                    on_unit(record)
            todo = [u for u in todo if not self.unit_path(u).is_file()]
            if todo and not ran:
                logger.info("benchmark: %d units left, all being run by other processes", len(todo))
                break
        bar.close()
        return [read_record(p, "a unit's scores file") for u in units if (p := self.unit_path(u)).is_file()]

    def restore_from(self, results: str | Path) -> int:
        """Mark units done from a report's `results.json` (see `cllmfs_trainer.benchmark.resume.restore_units`).

        Args:
            results (`str` or `Path`):
                Path of a `results.json` written by `write_report`.

        Returns:
            `int`: how many units were restored.
        """
        self.prepare()
        return restore_units(self.config, self.layout, self.units(), Path(results))

    # --- data -------------------------------------------------------------------------------------------------------

    def query(self, dataset: str) -> list[Sentence]:
        """The query sentences of a dataset's test split: all, or the fixed `query_size` subset."""
        if dataset not in self._queries:
            full = get_dataset(dataset).load(self.config.query_split, self.config.data_dir).sentences
            self._queries[dataset] = query_subset(full, self.config.query_size, self.config.query_seed)
        return self._queries[dataset]

    def support(self, unit: Unit) -> SupportSet:
        """The support set of a unit's source, sampled once and saved; never overlapping any query of the run."""
        path = self.layout.support_set(unit)
        with hold_lock(self.layout.support_lock(unit)):  # another process may be writing it
            if path.is_file():
                return SupportSet.load(path)
            return self._sample_support(unit, path)

    def _sample_support(self, unit: Unit, path: Path) -> SupportSet:
        """Sample a unit's support set from its source's train split and save it to `path`."""
        source = get_dataset(unit.source)
        pool = source.load("train", self.config.data_dir)
        # Exclude every query of the run, so an INTER support set is the same whichever targets come first.
        exclude = [s for task in self.config.tasks for s in self.query(task.split(":", 1)[1])]
        support = sample_support_set(
            pool.sentences, unit.k, [t.label for t in source.types], unit.seed, exclude=exclude, source=pool.source
        )
        support.save(path)
        return support

    def types(self, unit: Unit) -> tuple[list[EntityType], list[EntityType]]:
        """(train types, test types) of a unit."""
        source, target = get_dataset(unit.source), get_dataset(unit.dataset)
        return list(source.types), list(target.types)

    def excluded_queries(self) -> tuple[set[tuple[str, ...]], str]:
        """The token sequences of every query sentence of the run, and a short digest of them (for fingerprints)."""
        excluded = {tuple(s.tokens) for task in self.config.tasks for s in self.query(task.split(":", 1)[1])}
        digest = hashlib.sha256("\n".join(sorted(" ".join(t) for t in excluded)).encode()).hexdigest()[:16]
        return excluded, digest

    def source_sentences(self) -> tuple[list[Sentence], list[EntityType]]:
        """The INTER source's train split without any query sentence of the run, and the source's types."""
        dataset = get_dataset(INTER_SOURCE)
        excluded, _ = self.excluded_queries()
        pool = dataset.load("train", self.config.data_dir).sentences
        return [s for s in pool if tuple(s.tokens) not in excluded], list(dataset.types)

    def frozen_encoder(self):
        """The frozen encoder of the prototype baselines, loaded once per run."""
        if self._encoder is None:
            self._encoder = load_encoder(self.config.encoder)
        return self._encoder

    def baseline_context(self, unit: Unit) -> BaselineContext:
        """What a baseline is told about `unit`."""
        return BaselineContext(
            seed=unit.seed,
            setting=unit.setting,
            encoder=self.config.encoder,
            cache_dir=self.layout.source_model_dir(unit.method, unit.seed),
            source_sentences=self.source_sentences,
            source_digest=self.excluded_queries()[1],
            frozen_encoder=self.frozen_encoder,
        )

    # --- units ------------------------------------------------------------------------------------------------------

    def run_unit(self, unit: Unit) -> dict[str, Any]:
        """Predict a unit's query (training first if needed) and save its scores."""
        support = self.support(unit)
        method = self.config.method(unit.method)
        if method.same_for_every_seed and (done := self._same_dataset_unit(unit)) is not None:
            return self._reuse(unit, done, support)
        query = self.query(unit.dataset)
        train_types, test_types = self.types(unit)
        start = time.perf_counter()
        predicted, extra = method.predict(self, unit, support, query, train_types, test_types)
        record = {
            **asdict(unit),
            "query_size": len(query),
            "support_sentences": len(support.sentences),
            "seconds": round(time.perf_counter() - start, 1),
            **score_unit(query, predicted),
            **extra,
        }
        self._save(unit, record, query, predicted)
        return record

    def _reuse(self, unit: Unit, done: Path, support: SupportSet) -> dict[str, Any]:
        """Zero-shot prompting never sees a support set or the source: every seed, K and setting of a dataset gives
        the same predictions, so a finished unit of the same dataset is copied."""
        record = {
            **read_record(done, "a unit's scores file"),
            "setting": unit.setting,
            "support_sentences": len(support.sentences),
            "seed": unit.seed,
            "k": unit.k,
            "reused_from": str(done.relative_to(self.root)),
        }
        predictions = done.with_suffix(".predictions.jsonl").read_text(encoding="utf-8")
        self._write(unit, record, predictions)
        return record

    def _same_dataset_unit(self, unit: Unit) -> Path | None:
        """A finished unit of the same dataset and method under another seed, K or setting (INTRA/INTER), if any."""
        # Search output_dir, not only this run's units: a run narrowed by --seeds, --ks or --tasks still reuses the
        # units other runs left there (one fingerprint covers the folder, so they were made with the same settings).
        own = self.unit_path(unit)
        for path in self.layout.same_dataset_units(unit):
            # Reuse only a unit that predicted for itself: a reused or restored one may lack its predictions.
            if (
                path != own
                and path.with_suffix(".predictions.jsonl").is_file()
                and "reused_from" not in read_record(path, "a unit's scores file")
            ):
                return path
        return None

    def measures_support_fit(self, unit: Unit) -> bool:
        """Whether a trained unit also predicts its own support set: every INTRA unit, and the first INTER target
        (INTER units share a model)."""
        if not self.config.fit_on_support:
            return False
        if unit.setting == "intra":
            return True
        return next(t for t in self.config.tasks if t.startswith("inter:")) == f"inter:{unit.dataset}"

    # --- trained methods --------------------------------------------------------------------------------------------

    def train(self, unit: Unit, method_overrides: dict[str, Any]) -> Path:
        """The unit's trained run folder, trained now unless a finished one exists (shared by INTER targets).

        Args:
            unit (`Unit`):
                The unit.
            method_overrides (`dict[str, Any]`):
                The recipe keys the unit's method changes.
        """
        run_dir = self.layout.run_dir(unit)
        if RunFolder.exists(run_dir):
            return run_dir
        if self.train_fn is None:
            raise ValueError(f"method {unit.method!r} needs training, but the benchmark was given no train_fn")
        overrides = {
            **self.config.train_overrides,
            **method_overrides,
            "dataset": unit.source,
            "setting": "intra",
            "k": unit.k,
            "support_set": str(self.layout.support_set(unit)),
            "support_seed": unit.seed,
            "seed": unit.seed,
            "model_name_or_path": self.config.model,
        }
        if self.config.data_dir:
            overrides["data_dir"] = self.config.data_dir
        partial = self.layout.partial_run_dir(unit)
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

    @staticmethod
    def train_seconds(run_dir: Path) -> float | None:
        """How long the run folder's last training attempt took."""
        return RunFolder.load(run_dir).extra.get("train_seconds")

    @staticmethod
    def train_dtype(run_dir: Path) -> str | None:
        """The precision the run trained in where its recipe said `auto` (`auto_choices.json`: the probe of the
        machine it trained on, so the units of one report can differ); `None` where the recipe fixed it."""
        # Heavy (torch and trl), like every training import here; a trained unit has loaded them already.
        from cllmfs_trainer.training.cpu.auto_choices import CHOICES_FILE, saved_choices

        choices = run_dir / CHOICES_FILE
        return saved_choices(choices).get("dtype") if choices.is_file() else None

    def _last_checkpoint(self, partial: Path) -> Path | None:
        """The newest complete checkpoint of an interrupted training, if checkpoints are on."""
        if not self.config.checkpoint_steps or not partial.is_dir():
            return None
        steps = {int(p.name.split("-")[1]): p for p in partial.glob("checkpoint-*") if p.name.split("-")[1].isdigit()}
        # Trainer writes trainer_state.json last: a checkpoint without it was cut off while being saved.
        complete = [steps[n] for n in sorted(steps, reverse=True) if (steps[n] / "trainer_state.json").is_file()]
        return complete[0] if complete else None

    def extractor(
        self,
        run_dir: Path | None,
        types: Sequence[EntityType],
        adapter: str | None = None,
        decoding: dict[str, Any] | None = None,
    ):
        """An `EntityExtractor` for a trained run folder, or for the base model (`run_dir=None`: zero-shot).

        Args:
            run_dir (`Path`, *optional*):
                A trained run folder; `None` prompts the base model.
            types (`Sequence[EntityType]`):
                The types to extract.
            adapter (`str`, *optional*):
                With `run_dir=None`: an `init_adapter` value (`prior`, or an adapter folder) merged into the base model.
                The recipe's prompt and decoding keys apply, as they do to the runs trained from that adapter.
            decoding (`dict[str, Any]`, *optional*):
                With `run_dir=None`: prediction keys (`DECODING_KEYS`) that replace the recipe's.
        """
        # Heavy (torch and transformers): restoring a report and scoring saved predictions need neither.
        from cllmfs_trainer.inference.generate import EntityExtractor

        if run_dir is not None:
            return EntityExtractor.from_run(
                run_dir, types=types, batch_size=self.config.batch_size, dtype=self.config.predict_dtype
            )
        tokenizer = ensure_pad_token(load_tokenizer(self.config.model, padding_side="left"))
        if adapter is None:
            model = load_model(self.config.model, dtype=self.config.predict_dtype)
            return EntityExtractor(model, tokenizer, types, batch_size=self.config.batch_size, **(decoding or {}))
        import torch
        from peft import PeftModel

        folder = resolve_init_adapter(adapter, self.config.model)
        # Merged in the precision the base loads in, then cast, as `EntityExtractor.from_run` does.
        model = PeftModel.from_pretrained(load_model(self.config.model), folder).merge_and_unload()
        if self.config.predict_dtype is not None:
            model = model.to(getattr(torch, self.config.predict_dtype))
        recipe = self.config.fingerprint().get("recipe_settings", {})
        chosen = {**{key: recipe[key] for key in DECODING_KEYS if key in recipe}, **(decoding or {})}
        return EntityExtractor(model, tokenizer, types, batch_size=self.config.batch_size, **chosen)

    @staticmethod
    def support_fit(extractor: Any, support: SupportSet, train_types: list[EntityType]) -> dict[str, float]:
        """Span scores of a trained model on its own support set: did it at least learn what it was shown?

        Args:
            extractor (`EntityExtractor`):
                The unit's extractor, loaded once for its query and its support set.
            support (`SupportSet`):
                The support set it was trained on.
            train_types (`list[EntityType]`):
                The types it was trained on (an INTER run: the source's).
        """
        predicted = [p.spans for p in extractor.predict(support.sentences, types=train_types)]
        scores = span_scores([s.spans for s in support.sentences], predicted)
        return {key: scores[key] for key in ("precision", "recall", "f1")}

    # --- writing ----------------------------------------------------------------------------------------------------

    def _save(self, unit: Unit, record: dict[str, Any], query: list[Sentence], predicted: list[list[Span]]) -> None:
        lines = [
            json.dumps({"id": s.id, "spans": [list(span) for span in spans]}, ensure_ascii=False)
            for s, spans in zip(query, predicted)
        ]
        self._write(unit, record, "\n".join(lines) + "\n")

    def _write(self, unit: Unit, record: dict[str, Any], predictions: str) -> None:
        path = self.unit_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.layout.predictions_file(unit).write_text(predictions, encoding="utf-8")
        # The scores file appears atomically, and only after the predictions.
        atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
