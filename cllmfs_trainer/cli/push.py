"""`cllmfs push --run RUN_DIR --repo ID [--public] [--base-model HUB_ID]`: upload a run folder with its model card to a
Hugging Face Hub repository; only on this explicit request does the package write to the Hub."""

from __future__ import annotations

from cllmfs_trainer.cli.card import make_push_parser as make_parser
from cllmfs_trainer.cli.card import push_main as main

__all__ = ["main", "make_parser"]
