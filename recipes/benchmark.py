"""Run the few-shot benchmark from a YAML and write its report:

    python recipes/benchmark.py recipes/smollm2/benchmark.yaml [--key value ...] [--report-only] [--overwrite]
                                [--restore-from bench/results/<report>/results.json]

Keys are those of `cllmfs_trainer.benchmark.BenchmarkConfig` plus `report_dir`; `--key value` flags override the
YAML (lists as JSON, e.g. `--seeds [0,1]`). An interrupted run resumes where it stopped: finished units are kept in
`output_dir` and skipped, and a training cut off mid-way resumes from its last checkpoint (`checkpoint_steps`).
`--report-only` rewrites the report from the finished units without running anything. `--restore-from` first marks
as done the units that a report's results.json holds (a committed report, on a fresh clone whose `output_dir` is
empty), so only the missing units run; the report must come from a benchmark with the same settings.

Trained methods train through `recipes/train.py`, so a benchmark model is trained exactly as a recipe run is.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))  # recipes/train.py, when this file is loaded from elsewhere
import train  # noqa: E402  (recipes/train.py)

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig, write_report  # noqa: E402


def train_run(recipe: str, overrides: dict[str, Any], output_dir: Path) -> None:
    """Train one run folder with `recipes/train.py`: the recipe, then `--key value` overrides."""
    argv = [recipe, "--output_dir", str(output_dir), "--disable_tqdm", "true", "--report_to", "none"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    trainer = train.main(*train.parse(argv))
    del trainer
    gc.collect()  # the next unit loads a fresh model; do not keep two in memory


def load_config(argv: list[str]) -> tuple[BenchmarkConfig, Path, bool, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML")
    parser.add_argument("--overwrite", action="store_true", help="discard a finished run with other settings")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from finished units")
    parser.add_argument("--restore-from", type=Path, default=None, metavar="RESULTS_JSON",
                        help="first mark as done the units of a report's results.json (same settings only)")
    args, rest = parser.parse_known_args(argv)
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
    return BenchmarkConfig(**raw), report_dir, args.overwrite, args.report_only, args.restore_from


def main(config: BenchmarkConfig, report_dir: Path, overwrite: bool = False, report_only: bool = False,
         restore_from: Path | None = None) -> Path:
    benchmark = Benchmark(config, train_fn=train_run, overwrite=overwrite)
    if restore_from is not None:
        benchmark.restore_from(restore_from)
    if report_only:
        records = [json.loads(p.read_text()) for u in benchmark.units() if (p := benchmark.unit_path(u)).is_file()]
    else:
        records = benchmark.run()
    overrides = ", ".join(f"{key}={value}" for key, value in config.train_overrides.items())
    return write_report(records, report_dir, model=config.model, query_note=config.query_note(),
                        settings_note=overrides, fingerprint=config.fingerprint())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(main(*load_config(sys.argv[1:])))
