"""Where a benchmark keeps everything under its `output_dir`: every path is built here, and nowhere else.

Nothing under `output_dir` is meant for git: it holds dataset sentences, whose licenses may forbid it.

    benchmark.json                              the config and its fingerprint; a resumed run must match it
    support/<source>/k5/seed0.txt (+ .json)     support sets (source = the dataset, or `ontonotes5` for INTER)
    runs/<source>/k5/seed0/<method>/            trained run folders (`cllmfs_trainer.run_folder`)
    runs/<source>/k5/seed0/<method>.partial/    a training under way (with its checkpoints); renamed when complete
    source_models/<method>/seed0/               CONTaiNER's and ProML's source-trained encoders, shared by INTER targets
    units/<setting>-<dataset>/k5/seed0/<method>.json   scores of one unit; its presence marks the unit done
    units/.../<method>.predictions.jsonl        predicted spans per query sentence (ids and offsets, no text)
    locks/                                      what each process of a shared run holds (see `Benchmark.run`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cllmfs_trainer.benchmark.config import Unit
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.parsing import read_json_file

SETTINGS = ("intra", "inter")


@dataclass(frozen=True)
class BenchmarkLayout:
    """The paths of one benchmark's `output_dir`.

    Args:
        root (`Path`):
            The benchmark's `output_dir`.
    """

    root: Path

    # Everything the benchmark writes under `root`; `--overwrite` removes these and nothing else.
    OWNED = ("benchmark.json", "support", "runs", "source_models", "units", "locks")

    def owned_paths(self) -> list[Path]:
        """The entries of `root` that the benchmark wrote (and may remove), as far as they exist."""
        return [self.root / name for name in self.OWNED if (self.root / name).exists()]

    @property
    def config_file(self) -> Path:
        """`benchmark.json`: the config and fingerprint of the run that claimed the folder."""
        return self.root / "benchmark.json"

    def support_set(self, unit: Unit) -> Path:
        """The BIO file of a unit's support set (shared by every unit of the same source, K and seed)."""
        return self.root / "support" / unit.source / f"k{unit.k}" / f"seed{unit.seed}.txt"

    def run_dir(self, unit: Unit) -> Path:
        """The trained run folder of a unit (shared by every INTER target of the same method, K and seed)."""
        return self.root / "runs" / unit.source / f"k{unit.k}" / f"seed{unit.seed}" / unit.method

    def partial_run_dir(self, unit: Unit) -> Path:
        """Where `run_dir(unit)` is trained, and checkpointed, until it is complete."""
        run_dir = self.run_dir(unit)
        return run_dir.with_name(run_dir.name + ".partial")

    def source_model_dir(self, method: str, seed: int) -> Path:
        """The source-trained encoder of a baseline that trains on OntoNotes before adapting (CONTaiNER, ProML)."""
        return self.root / "source_models" / method / f"seed{seed}"

    def task_dir(self, setting: str, dataset: str) -> Path:
        """The units of one task."""
        return self.root / "units" / f"{setting}-{dataset}"

    def unit_file(self, unit: Unit) -> Path:
        """The scores of a unit; it exists only once the unit is done."""
        return self.task_dir(unit.setting, unit.dataset) / f"k{unit.k}" / f"seed{unit.seed}" / f"{unit.method}.json"

    def predictions_file(self, unit: Unit) -> Path:
        """The predicted spans of a unit, one JSON line per query sentence."""
        return self.unit_file(unit).with_suffix(".predictions.jsonl")

    def lock_file(self, name: str) -> Path:
        """A lock of processes that share the run (`locks/<name>.lock`), e.g. `benchmark.json` or `report`."""
        return self.root / "locks" / f"{name}.lock"

    def unit_lock(self, unit: Unit, same_for_every_seed: bool = False) -> Path:
        """The lock a process holds while it runs `unit`, shared by the units that would otherwise compute one thing
        twice: every K and INTER target of a source, seed and method (one trained run folder or source encoder), or
        with `same_for_every_seed` every unit of a dataset and method (one zero-shot prediction)."""
        shared = f"{unit.dataset}" if same_for_every_seed else f"{unit.source}-seed{unit.seed}"
        return self.lock_file(f"{shared}-{unit.method}")

    def support_lock(self, unit: Unit) -> Path:
        """The lock held while a support set is sampled and written, so that no process reads half a file."""
        return self.lock_file(f"support-{unit.source}-k{unit.k}-seed{unit.seed}")

    def same_dataset_units(self, unit: Unit) -> list[Path]:
        """Score files of the same dataset and method under any setting, K and seed (zero-shot reuses them)."""
        return [
            path
            for setting in SETTINGS
            for path in sorted(self.task_dir(setting, unit.dataset).glob(f"k*/seed*/{unit.method}.json"))
        ]


def read_record(path: Path, what: str) -> dict[str, Any]:
    """The JSON object of a file the benchmark wrote (`benchmark.json`, a unit, a report's `results.json`).

    Raises:
        `UserError`: naming the file when it is damaged (cut off, edited by hand) or not an object, with what to do.
    """
    try:
        record = read_json_file(path, what)
    except UserError as err:
        raise UserError(
            f"{what} is damaged: {err}; delete it (the benchmark redoes what it held) or restore it"
        ) from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: {what} holds a {type(record).__name__}, not a JSON object; delete or restore it")
    return record
