"""The reproducible few-shot benchmark: INTRA/INTER protocol, a registry of methods, resumable runs, reports."""

from cllmfs_trainer.benchmark.methods import METHODS, Method, get_method, register_method
from cllmfs_trainer.benchmark.protocol import Benchmark, BenchmarkConfig, Unit
from cllmfs_trainer.benchmark.report import aggregate, write_report

__all__ = [
    "METHODS",
    "Benchmark",
    "BenchmarkConfig",
    "Method",
    "Unit",
    "aggregate",
    "get_method",
    "register_method",
    "write_report",
]
