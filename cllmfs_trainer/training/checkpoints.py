"""Which `checkpoint-<step>` folder a training may resume from: the newest *complete* one.

A save that was interrupted (a kill, a full disk) leaves a checkpoint folder without some of its files, or with a
truncated one. `Trainer.train(resume_from_checkpoint=True)` takes the newest folder by its name and then crashes on
it, or, without `optimizer.pt` and `scheduler.pt`, silently resumes with a fresh optimizer. Here a checkpoint counts
only when every file a resume reads is present and, for the `torch.save` zip archives, whole; an incomplete one is
named and skipped.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a resume reads: the trainer state (written last by `Trainer._save_checkpoint`), the optimizer and scheduler.
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
# The weights, as an adapter or as a full model (any one of them).
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """What makes `folder` unusable for a resume (a missing or truncated file), or None when it is complete."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" / ".join(WEIGHT_FILES[:2]))
    if missing:
        return f"{', '.join(missing)} missing"
    for name in ("optimizer.pt", "scheduler.pt"):
        # torch.save writes a zip archive whose directory sits at the end: a cut-off file has none.
        if not zipfile.is_zipfile(folder / name):
            return f"{name} is truncated or not a torch.save file"
    return None


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-<step>` folder of `output_dir`, logging each newer incomplete one it skips."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(
        ((int(match.group(1)), path) for path in output_dir.iterdir() if (match := CHECKPOINT.match(path.name))),
        reverse=True,
    )
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("skipping the incomplete checkpoint %s (%s)", path, problem)
    return None
