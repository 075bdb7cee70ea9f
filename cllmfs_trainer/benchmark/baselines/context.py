"""`BaselineContext`: what a baseline is told about the benchmark unit it predicts, and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cllmfs_trainer.data.io import Sentence
from cllmfs_trainer.data.registry import EntityType

if TYPE_CHECKING:
    from cllmfs_trainer.benchmark.baselines.encoder import Encoder


@dataclass(frozen=True)
class BaselineContext:
    """One benchmark unit as a baseline sees it; the baselines never see the benchmark itself.

    Args:
        seed (`int`):
            The unit's support-set seed; it also seeds the baseline's training.
        setting (`str`):
            `"intra"` or `"inter"`; in INTER, CONTaiNER and ProML first train on the source data.
        encoder (`str`):
            The encoder the baselines start from (`minilm` or an HF encoder id).
        cache_dir (`Path`):
            Where this method and seed keep their source-trained encoder, shared by every INTER target.
        source_sentences (`Callable[[], tuple[list[Sentence], list[EntityType]]]`):
            Loads the source's training sentences without any query sentence of the run, and the source's types;
            called only when a source training is needed.
        source_digest (`str`):
            A short digest of the query sentences removed from the source, for the cache's fingerprint.
        frozen_encoder (`Callable[[], Encoder]`):
            The frozen encoder of the prototype baselines, loaded once per benchmark run.
    """

    seed: int
    setting: str
    encoder: str
    cache_dir: Path
    source_sentences: Callable[[], tuple[list[Sentence], list[EntityType]]]
    source_digest: str
    frozen_encoder: Callable[[], Encoder]
