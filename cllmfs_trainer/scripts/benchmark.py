"""Run the few-shot benchmark from a YAML and write its report:

    python recipes/benchmark.py recipes/smollm2/benchmark.yaml [--key value ...] [--report-only] [--overwrite]
                                [--restore-from bench/results/<report>/results.json]

Keys are those of `cllmfs_trainer.benchmark.BenchmarkConfig` plus `report_dir`; `--key value` flags override the
YAML (lists as JSON, e.g. `--seeds [0,1]`). An interrupted run resumes where it stopped: finished units are kept in
`output_dir` and skipped, and a training cut off mid-way resumes from its last checkpoint (`checkpoint_steps`).
`--report-only` rewrites the report from the finished units without running anything. `--restore-from` first marks
as done the units that a report's results.json holds (a committed report, on a fresh clone whose `output_dir` is
empty), so only the missing units run; the report must come from a benchmark with the same settings.

Trained methods train through `cllmfs_trainer.scripts.train`, so a benchmark model is trained exactly as a recipe
run is.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig, write_report


@dataclass
class BenchmarkArguments:
    """The parsed command line: the benchmark, where its report goes, and what to do."""

    config: BenchmarkConfig
    report_dir: Path
    overwrite: bool = False
    report_only: bool = False
    restore_from: Path | None = None


def train_run(recipe: str, overrides: dict[str, Any], output_dir: Path) -> None:
    """Train one run folder with the training script: the recipe, then `--key value` overrides."""
    from cllmfs_trainer.scripts import train

    argv = [recipe, "--output_dir", str(output_dir), "--disable_tqdm", "true", "--report_to", "none"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    trainer = train.main(*train.parse_args(argv))
    del trainer
    gc.collect()  # the next unit loads a fresh model; do not keep two in memory


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser (overrides of the YAML's keys are read from the remaining arguments)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML")
    parser.add_argument("--overwrite", action="store_true", help="discard a finished run with other settings")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from finished units")
    parser.add_argument(
        "--restore-from",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="first mark as done the units of a report's results.json (same settings only)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> BenchmarkArguments:
    """Parse `argv` (default: `sys.argv[1:]`): the YAML, then `--key value` overrides of its keys."""
    parser = make_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    if len(rest) % 2:
        parser.error(f"overrides come in `--key value` pairs, got {rest}")
    for flag, value in zip(rest[::2], rest[1::2]):
        if not flag.startswith("--"):
            parser.error(f"expected --key, got {flag!r}")
        raw[flag[2:]] = yaml.safe_load(value)  # numbers, booleans, [lists] and {dicts} as YAML/JSON
    report_dir = Path(raw.pop("report_dir", Path(raw.get("output_dir", ".")) / "report"))
    known = set(BenchmarkConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        parser.error(f"{args.config}: unknown keys {unknown}; known: {sorted(known | {'report_dir'})}")
    return BenchmarkArguments(BenchmarkConfig(**raw), report_dir, args.overwrite, args.report_only, args.restore_from)


def main(args: BenchmarkArguments) -> Path:
    """Run (or only report) the benchmark; returns the report folder."""
    config = args.config
    benchmark = Benchmark(config, train_fn=train_run, overwrite=args.overwrite)
    if args.restore_from is not None:
        benchmark.restore_from(args.restore_from)
    records = benchmark.finished_records() if args.report_only else benchmark.run()
    overrides = ", ".join(f"{key}={value}" for key, value in config.train_overrides.items())
    return write_report(
        records,
        args.report_dir,
        model=config.model,
        query_note=config.query_note(),
        settings_note=overrides,
        fingerprint=config.fingerprint(),
    )


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `recipes/benchmark.py`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(main(parse_args(argv)))


if __name__ == "__main__":
    cli()
