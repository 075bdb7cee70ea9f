"""The query subset: which test sentences a run is scored on when it does not score them all."""

from __future__ import annotations

import random
from collections.abc import Sequence

from cllmfs_trainer.data.io import Sentence


def query_subset(sentences: Sequence[Sentence], size: int | None, seed: int = 0) -> list[Sentence]:
    """A fixed random subset of `size` sentences, in their original order.

    Every caller (training's `--eval_query_size`, `make_task`, the benchmark) draws the subset here, with its own
    `query_seed`: the subset never depends on the support-set seed, so all seeds and methods meet the same query.

    Args:
        sentences (`Sequence[Sentence]`):
            The full split.
        size (`int` or `None`):
            How many to keep; `None`, or a size at least the split's, keeps them all.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draw.

    Returns:
        `list[Sentence]`: the subset.
    """
    if size is None or size >= len(sentences):
        return list(sentences)
    if size < 0:
        raise ValueError(f"query size must be >= 0 or None, got {size}")
    keep = sorted(random.Random(seed).sample(range(len(sentences)), size))
    return [sentences[i] for i in keep]
