"""The reproducible few-shot benchmark: INTRA/INTER protocol, methods that carry their behaviour, resumable runs,
reports, and the baselines it compares against (`baselines/`).

`config` (what runs) -> `layout` (where everything goes) -> `runner` (`Benchmark`, unit by unit; `resume` checks a
folder and restores a report) -> `report`.
"""

from cllmfs_trainer.benchmark.config import BenchmarkConfig, Unit
from cllmfs_trainer.benchmark.layout import BenchmarkLayout
from cllmfs_trainer.benchmark.methods import METHODS, Method, get_method, register_method
from cllmfs_trainer.benchmark.report import aggregate, write_report
from cllmfs_trainer.benchmark.runner import Benchmark

__all__ = [
    "METHODS",
    "Benchmark",
    "BenchmarkConfig",
    "BenchmarkLayout",
    "Method",
    "Unit",
    "aggregate",
    "get_method",
    "register_method",
    "write_report",
]
