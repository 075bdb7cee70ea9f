"""Run the few-shot benchmark from a YAML and write its report:

    python recipes/benchmark.py recipes/smollm2/benchmark.yaml [--key value ...] [--report-only] [--overwrite]
                                [--restore-from bench/results/<report>/results.json]

Keys are those of `cllmfs_trainer.benchmark.BenchmarkConfig` plus `report_dir`; `--key value` flags override the
YAML (lists as JSON, e.g. `--seeds [0,1]`). Overriding `tasks`, `methods`, `seeds` or `ks` runs a subset, but the
report still covers every finished unit of the YAML's lists. An interrupted run resumes where it stopped: finished
units are kept in `output_dir` and skipped, and a training cut off mid-way resumes from its last checkpoint
(`checkpoint_steps`).
`--report-only` rewrites the report from the finished units without running anything. `--restore-from` first marks
as done the units that a report's results.json holds (a committed report, on a fresh clone whose `output_dir` is
empty), so only the missing units run; the report must come from a benchmark with the same settings. A subset run
restores every unit of the YAML's lists. Without `--restore-from`, a run refuses to rewrite a report that holds
finished units `output_dir` lacks, rather than drop them (`--overwrite` allows it).

Trained methods train through `cllmfs_trainer.scripts.train`, so a benchmark model is trained exactly as a recipe
run is.

The YAML, the recipe and `train_overrides` are checked before the first unit runs. A mistake ends with one line on
stderr and exit code 2; `--debug` (or CLLMFS_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import sys
from dataclasses import MISSING, astuple, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cllmfs_trainer.benchmark import Benchmark, BenchmarkConfig, Unit, write_report
from cllmfs_trainer.benchmark.methods import get_method
from cllmfs_trainer.command_line import OneLineArgumentParser, run_entry_point
from cllmfs_trainer.errors import DataFormatError, UsageError, UserError
from cllmfs_trainer.files import check_input_file, check_output_dir
from cllmfs_trainer.locks import hold_lock
from cllmfs_trainer.models.loading import check_model_reference
from cllmfs_trainer.parsing import load_yaml
from cllmfs_trainer.scripts.yaml_config import at, check_known_keys, check_value_types, field_hints, load_yaml_mapping

PROG = "benchmark.py"
# How every benchmark training runs: no progress bars inside the benchmark's own, no trackers.
RUN_SETTINGS = {"disable_tqdm": True, "report_to": "none"}
SUBSET_KEYS = ("tasks", "methods", "seeds", "ks")  # overriding these runs part of the file's benchmark


@dataclass
class BenchmarkArguments:
    """The parsed command line: the benchmark, where its report goes, and what to do."""

    config: BenchmarkConfig
    report_dir: Path
    overwrite: bool = False
    report_only: bool = False
    restore_from: Path | None = None
    report_config: BenchmarkConfig | None = None  # what the report covers, when `config` runs a subset of it


def train_run(recipe: str, overrides: dict[str, Any], output_dir: Path) -> None:
    """Train one run folder through the library: the recipe parsed once, the unit's overrides set on the arguments."""
    # Heavy (torch, transformers and trl): a report-only or restoring run never trains.
    from cllmfs_trainer.scripts import train

    arguments = recipe_arguments(train, recipe, {"output_dir": str(output_dir), **RUN_SETTINGS, **overrides})
    trainer = train.main(*arguments)
    del trainer
    gc.collect()  # the next unit loads a fresh model; do not keep two in memory


def recipe_arguments(train: ModuleType, recipe: str, overrides: dict[str, Any]) -> tuple[Any, ...]:
    """The training script's arguments for `recipe` with `overrides` set on them (`dataclasses.replace`).

    Each override goes to the argument class that has the key, converted as the command line would convert it: a
    YAML `1e-3` is a string, which the parser reads as a float.

    Args:
        train (`ModuleType`):
            The training script (`cllmfs_trainer.scripts.train`), imported by the caller.
        recipe (`str`):
            The recipe YAML.
        overrides (`dict[str, Any]`):
            Recipe keys and their values.

    Raises:
        `UsageError`: for an unknown key, or a value the argument classes refuse.
    """
    arguments = train.parse_args([recipe])
    actions = {action.dest: action for action in train.make_parser()._actions}
    changes: list[dict[str, Any]] = [{} for _ in arguments]
    for key, value in overrides.items():
        owner = next((i for i, a in enumerate(arguments) if key in {f.name for f in dataclasses.fields(a)}), None)
        if owner is None:
            raise UsageError(f"{key}: unknown recipe key; {train.KEYS_HINT}")
        changes[owner][key] = _as_parsed(actions.get(key), value)
    try:
        changed = tuple(dataclasses.replace(a, **c) if c else a for a, c in zip(arguments, changes))
        # Across classes too (an override of one against the recipe's value of another), as parsing checks them.
        train.check_decoding(*changed[:2])
    except (ValueError, TypeError) as err:  # the argument classes' own checks (`__post_init__`)
        raise UsageError(f"{recipe}: {err}") from None
    return changed


def _as_parsed(action: argparse.Action | None, value: Any) -> Any:
    """`value` converted by the command-line option's type, where it is a string (or a list of strings)."""
    convert = getattr(action, "type", None)
    if not callable(convert):
        return value
    if isinstance(value, list):
        return [convert(item) if isinstance(item, str) else item for item in value]
    return convert(value) if isinstance(value, str) else value


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser (overrides of the YAML's keys are read from the remaining arguments)."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a finished run with other settings, or a report's units that output_dir lacks",
    )
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
    raw, lines = load_yaml_mapping(args.config, "benchmark config")
    in_file = dict(raw)
    if len(rest) % 2:
        parser.error(f"overrides come in `--key value` pairs, got {rest}")
    for flag, value in zip(rest[::2], rest[1::2]):
        if not flag.startswith("--"):
            parser.error(f"expected --key, got {flag!r}")
        try:
            raw[flag[2:]] = load_yaml(value, flag)  # numbers, booleans, [lists] and {dicts} as YAML/JSON
        except DataFormatError as err:
            raise UsageError(f"{flag}: {value!r} is not a YAML/JSON value ({err})") from None
        lines.pop(flag[2:], None)  # messages then name the flag's key without the file's line
    known = set(BenchmarkConfig.__dataclass_fields__) | {"report_dir"}
    check_known_keys(raw, known, args.config, lines, f"known keys: {', '.join(sorted(known))}")
    required = [f.name for f in dataclasses.fields(BenchmarkConfig) if f.default is f.default_factory is MISSING]
    missing = [key for key in required if key not in raw]
    if missing:
        raise UsageError(f"{args.config}: missing key(s) {', '.join(missing)}")
    hints = {**field_hints(BenchmarkConfig), "report_dir": str}
    check_value_types(raw, hints, args.config, lines, strings_are_parsed=False)
    _check_values(raw, args.config, lines)
    report_dir = Path(raw.pop("report_dir", Path(raw.get("output_dir", ".")) / "report"))
    try:
        config = BenchmarkConfig(**raw)
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # BenchmarkConfig's own checks: missing keys, unknown methods or tasks
        raise UsageError(f"{args.config}: {err}") from None
    if args.restore_from is not None:
        check_input_file(args.restore_from, "--restore-from")
    _check_training(config)
    # `--methods [x]` (or tasks, seeds, ks) runs a subset; the report still covers every finished unit of the file's
    # lists and the given ones, so that a subset run never drops other units' rows from a committed report.
    widened = {
        key: in_file[key] + [item for item in raw[key] if item not in in_file[key]]
        for key in SUBSET_KEYS
        if isinstance(in_file.get(key), list) and raw[key] != in_file[key]
    }
    if widened:
        # `config` fell back to its first method as the reference where the subset leaves the file's one out; the
        # report covers the file's methods, so it compares against the file's reference again.
        default_reference = next(f.default for f in dataclasses.fields(BenchmarkConfig) if f.name == "reference")
        widened["reference"] = raw.get("reference", default_reference)
    report_config = dataclasses.replace(config, **widened) if widened else None
    return BenchmarkArguments(config, report_dir, args.overwrite, args.report_only, args.restore_from, report_config)


def _check_values(raw: dict[str, Any], path: str, lines: dict[str, int]) -> None:
    """Values that have the right type but cannot work, refused before any unit runs."""
    for key in ("ks", "seeds", "tasks", "methods"):
        if key in raw and not raw[key]:
            raise UsageError(f"{at(path, lines, key)}: must not be empty")
    if any(k < 1 for k in raw.get("ks", ())):
        raise UsageError(f"{at(path, lines, 'ks')}: shots per type must be >= 1, got {raw['ks']}")
    for key in ("seeds", "ks", "tasks", "methods"):
        values = raw.get(key, ())
        if len(set(values)) != len(values):
            raise UsageError(f"{at(path, lines, key)}: a value appears twice in {values}")
    for key in ("query_size", "batch_size"):
        if raw.get(key) is not None and raw[key] < 1:
            raise UsageError(f"{at(path, lines, key)}: must be >= 1, got {raw[key]}")
    settings = raw.get("settings") or {}
    for name in raw.get("methods", ()):
        if name in settings:  # registered by BenchmarkConfig from `settings`
            continue
        try:
            get_method(name)
        except ValueError as err:
            raise UsageError(f"{at(path, lines, 'methods')}: {err}") from None
    for key in ("recipe", "inter_recipe"):
        if raw.get(key) is not None:
            check_input_file(raw[key], f"{at(path, lines, key)}:")
    if raw.get("data_dir") is not None and not Path(raw["data_dir"]).is_dir():
        raise UsageError(f"{at(path, lines, 'data_dir')}: {raw['data_dir']} is not an existing folder")
    for key in ("output_dir", "report_dir"):
        if raw.get(key) is not None:
            check_output_dir(raw[key], f"{at(path, lines, key)}:")


def _check_training(config: BenchmarkConfig) -> None:
    """Parse the recipes and `train_overrides` as the first trained units will: a bad key fails now, not hours in."""
    if not any(config.method(name).needs_recipe for name in config.methods) or not config.recipe:
        return
    # Heavy (torch, transformers and trl): loaded only when the config has trained methods.
    from cllmfs_trainer.scripts import train

    if config.model != "default":
        check_model_reference(config.model, "model", weights=True)
    for recipe in dict.fromkeys(filter(None, (config.recipe, config.inter_recipe))):
        overrides = {"output_dir": str(Path(config.output_dir) / "runs"), **config.train_overrides}
        try:
            recipe_arguments(train, recipe, overrides)
        except UserError as err:
            raise UsageError(f"recipe {recipe} with train_overrides {config.train_overrides}: {err}") from None


def main(args: BenchmarkArguments) -> Path:
    """Run (or only report) the benchmark; returns the report folder, rewritten after every unit that finishes."""
    benchmark = Benchmark(args.config, train_fn=train_run, overwrite=args.overwrite)
    if args.restore_from is not None:
        # The report covers the file's lists, not only the subset that runs: restore all of them, or the rewritten
        # report would drop every restored unit outside the subset.
        Benchmark(args.report_config or args.config).restore_from(args.restore_from)
    elif not args.overwrite:
        _check_report_kept(args)
    if not args.report_only:
        benchmark.run(on_unit=lambda record: report(args))
    return report(args)


def _check_report_kept(args: BenchmarkArguments) -> None:
    """Refuse to rewrite a report that holds finished units `output_dir` lacks (a fresh clone): it would lose them."""
    existing = args.report_dir / "results.json"
    if not existing.is_file():
        return
    try:
        units = json.loads(existing.read_text(encoding="utf-8"))["units"]
        held = {(u["setting"], u["dataset"], u["k"], u["seed"], u["method"]) for u in units}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"{existing}: not a benchmark report ({err}); move it away or pass --overwrite") from None
    benchmark = Benchmark(args.report_config or args.config)
    wanted = {astuple(u) for u in benchmark.units()}
    missing = sorted(key for key in held & wanted if not benchmark.unit_path(Unit(*key)).is_file())
    if missing:
        raise UsageError(
            f"{existing} holds {len(missing)} finished units that {benchmark.root} lacks (e.g. {missing[0]}); "
            f"rewriting it would drop them: pass --restore-from {existing} to keep them, or --overwrite"
        )


def report(args: BenchmarkArguments) -> Path:
    """Write the report of every finished unit of the YAML's lists (`report_config`: a subset run reports them all)."""
    config = args.report_config or args.config
    benchmark = Benchmark(config)
    overrides = ", ".join(f"{key}={value}" for key, value in config.train_overrides.items())
    # Processes sharing the run read the finished units and write the report one at a time: the last writer has
    # every unit, never an older list written over a newer one (`--report-only` runs nothing, and writes no lock).
    shared = not args.report_only
    with hold_lock(benchmark.layout.lock_file("report")) if shared else contextlib.nullcontext():
        return write_report(
            benchmark.finished_records(),
            args.report_dir,
            model=config.model,
            query_note=config.query_note(),
            settings_note=overrides,
            fingerprint=config.fingerprint(),
            reference=config.reference,
        )


def cli(argv: list[str] | None = None) -> None:
    """Entry point of `recipes/benchmark.py`: exits with 2 after one line on stderr for a mistake in the config.

    Args:
        argv (`list[str]`, *optional*):
            The arguments; `sys.argv[1:]` by default.
    """

    def body(rest: list[str]) -> None:
        arguments = parse_args(rest)  # before logging is set up: a mistake prints its one line and nothing else
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        print(main(arguments))

    code = run_entry_point(PROG, body, argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    cli()
