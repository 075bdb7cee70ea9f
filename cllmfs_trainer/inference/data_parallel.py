"""Data-parallel prediction: the processes of `accelerate launch` share the batches of every `generate` call.

    accelerate launch --num_processes 2 -m cllmfs_trainer.cli predict --run RUN --input in.txt --output out.jsonl

Every process builds the same jobs and the same length-sorted batches, answers every `world_size`-th batch, and the
answers are exchanged with `torch.distributed.all_gather_object`, so every process ends with all of them. A batch
holds the same prompts as in one process, with the same padding and the same shared prefixes, so the output equals
one process's exactly, whatever the input's length; only the main process writes it. Sharding the sentences instead
would change which prompts share a batch, and with it float rounding and, at near ties, a greedy choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


def process_group() -> tuple[int, int]:
    """`(rank, world_size)` of the initialised `torch.distributed` group, or `(0, 1)` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Every `world_size`-th item from `rank`: long and short batches alternate, so the shares cost about the same."""
    return list(items[rank::world_size])


def gather_rows(rows: dict[int, Any], world_size: int) -> dict[int, Any]:
    """Every process's `{job index: answer}`, merged; each process passes its own and gets all of them."""
    if world_size == 1:
        return rows
    import torch.distributed as dist

    shares: list[dict[int, Any] | None] = [None] * world_size
    dist.all_gather_object(shares, rows)
    merged: dict[int, Any] = {}
    for share in shares:
        merged.update(share or {})
    return merged
