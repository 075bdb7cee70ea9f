"""The reproducible few-shot benchmark: INTRA/INTER protocol, resumable runs, Table-1 style reports."""

from cllmfs_trainer.benchmark.protocol import METHODS, Benchmark, BenchmarkConfig, Unit
from cllmfs_trainer.benchmark.report import aggregate, write_report

__all__ = ["METHODS", "Benchmark", "BenchmarkConfig", "Unit", "aggregate", "write_report"]
