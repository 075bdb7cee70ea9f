"""`cllmfs benchmark CONFIG.yaml [--key value ...]`: run the few-shot benchmark, resumably, and write its report.

The config's keys are `BenchmarkConfig`'s plus `report_dir` (`cllmfs benchmark CONFIG.yaml --help`); see
docs/results.md. `python recipes/benchmark.py CONFIG.yaml` runs the same code.
"""

from __future__ import annotations

import argparse
import logging

from cllmfs_trainer.command_line import run_entry_point
from cllmfs_trainer.scripts import benchmark

PROG = "cllmfs benchmark"
HELP = "run the few-shot benchmark from a config YAML and write its report"


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """List `benchmark` among `cllmfs`'s jobs; its arguments are the config's keys, parsed by `main`."""
    parser = subparsers.add_parser("benchmark", help=HELP, description=HELP, add_help=False)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="CONFIG.yaml, then --key value overrides")
    return parser


def main(argv: list[str]) -> int:
    """Parse the config, run (or only report) the benchmark, print the report folder; returns the exit code.

    Args:
        argv (`list[str]`):
            The config, then `--key value` overrides and the script's flags (`--report-only`, `--restore-from`, ...).
    """

    def body(rest: list[str]) -> None:
        arguments = benchmark.parse_args(rest)  # before logging is set up: a mistake prints its one line alone
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        print(benchmark.main(arguments))

    return run_entry_point(PROG, body, argv)
