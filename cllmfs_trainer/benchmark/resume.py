"""Resuming a benchmark folder, and restoring its finished units from a committed report.

A benchmark folder belongs to the settings that change results (`BenchmarkConfig.fingerprint`): a run with other
settings refuses to resume it, and a report is restored only into a benchmark with its settings.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, astuple
from pathlib import Path

from cllmfs_trainer.benchmark.config import BenchmarkConfig, Unit, changed_fields, upgrade_fingerprint
from cllmfs_trainer.benchmark.layout import BenchmarkLayout, read_record
from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import atomic_write_text

logger = logging.getLogger(__name__)


def check_resume(config: BenchmarkConfig, layout: BenchmarkLayout, overwrite: bool) -> None:
    """Claim `layout.root` for `config`: write its config and fingerprint, after checking those of a run it holds.

    Args:
        config (`BenchmarkConfig`):
            The benchmark about to run.
        layout (`BenchmarkLayout`):
            Its folder.
        overwrite (`bool`):
            Empty a folder that holds a run with other settings, instead of raising.

    Raises:
        `UserError`: naming the settings that differ, when the folder holds another run and `overwrite` is off.
    """
    saved = layout.config_file
    current = {"config": asdict(config), "fingerprint": config.fingerprint()}
    if saved.is_file():
        previous = read_record(saved, "the benchmark's settings file")
        previous["fingerprint"] = upgrade_fingerprint(previous.get("fingerprint", {}))
        changed = changed_fields(previous["fingerprint"], current["fingerprint"])
        if changed:
            if not overwrite:
                raise UserError(
                    f"{layout.root} holds a benchmark run with different settings ({', '.join(changed)})"
                    "; resume with the same ones, pick another output_dir, or pass --overwrite"
                )
            for path in layout.owned_paths():  # only what a benchmark wrote: the user's own files stay
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        else:
            # Keep what this config leaves out: settings' definitions (their finished units stay on disk) and the
            # weights of starting adapters, including those known before and unreadable now.
            for key in ("settings", "method_definitions", "init_adapters"):
                before, now = previous["fingerprint"].get(key) or {}, current["fingerprint"].get(key) or {}
                merged = {**before, **{name: value for name, value in now.items() if value is not None}}
                merged = {**{name: None for name in now}, **merged}
                if merged:
                    current["fingerprint"][key] = merged
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(current, indent=2) + "\n")


def restore_units(config: BenchmarkConfig, layout: BenchmarkLayout, units: list[Unit], path: Path) -> int:
    """Mark units done from a report's `results.json`, e.g. a committed report on a fresh clone.

    Only `units` that are not done yet are written, each with `restored_from` naming the report. A report holds
    scores, not predictions, so a restored unit has no predictions file. The report must come from a benchmark with
    the same settings: its fingerprint is compared where it has one (reports written before the fingerprint was saved
    are checked on model and query only, with a warning).

    Args:
        config (`BenchmarkConfig`):
            The benchmark restored into.
        layout (`BenchmarkLayout`):
            Its folder.
        units (`list[Unit]`):
            The benchmark's units.
        path (`Path`):
            The report's `results.json`.

    Returns:
        `int`: how many units were restored.

    Raises:
        `UserError`: when the report is damaged, its model, query or fingerprint differ, or a unit lacks a field.
    """
    report = read_record(path, "the report to restore from")
    for key, ours in (("model", config.model), ("query", config.query_note())):
        if report.get(key) != ours:
            raise UserError(f"{path}: its {key} is {report.get(key)!r}, this benchmark's is {ours!r}")
    if "fingerprint" in report:
        changed = changed_fields(upgrade_fingerprint(report["fingerprint"]), config.fingerprint())
        if changed:
            raise UserError(f"{path} comes from a benchmark with different settings ({', '.join(changed)})")
    else:
        logger.warning(
            "%s has no fingerprint (an older report): only its model and query were checked, not the "
            "recipe, overrides or encoder",
            path,
        )
    wanted = {astuple(u) for u in units}
    restored = 0
    for record in report.get("units", []):
        try:
            unit = Unit(*(record[f] for f in ("setting", "dataset", "k", "seed", "method")))
        except KeyError as missing:
            raise UserError(f"{path}: a unit record lacks the field {missing}") from None
        target = layout.unit_file(unit)
        if astuple(unit) not in wanted or target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            target, json.dumps({**record, "restored_from": str(path)}, indent=2, ensure_ascii=False) + "\n"
        )
        restored += 1
    logger.info("benchmark: restored %d units from %s", restored, path)
    return restored
