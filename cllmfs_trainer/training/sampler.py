"""Which SFT samples each epoch sees, and in what batches: fewer "no entity" samples, less padding.

Two levers, both off by default (every sample once per epoch, in random order, as the paper and `SFTTrainer` do):

- `empty_ratio`: most (sentence, type) samples hold no entity of their type (74% for 5-shot WNUT'17, 86% for
  OntoNotes' 18 types). With a ratio r, each epoch keeps every sample that has an entity and, per type, r empty
  samples for each non-empty one. The empty samples of a type are taken in a fixed shuffled order that continues
  from epoch to epoch, so over training every one of them is seen (GLiNER caps absent types the same way).
- `length_bucket_batches`: rows are padded to the longest in their batch, so batches of similar lengths waste less.
  Each epoch's order is cut into groups of this many batches; each group is sorted by length and cut into batches,
  and the batches are shuffled. Batches stay random across groups while their rows have similar lengths.

The order depends only on the seed and the epoch (`set_epoch`, which the Trainer calls), so a resumed training sees
the batches an uninterrupted one does.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class FewShotSampler(Sampler[int]):
    """Indices of one epoch's samples, with the empty-sample ratio and length bucketing described above.

    Args:
        has_entity (`Sequence[bool]`):
            Per sample, whether its completion names at least one entity.
        type_ids (`Sequence[int]`):
            Per sample, the queried type (the ratio is kept per type).
        lengths (`Sequence[int]`):
            Per sample, its length in tokens.
        batch_size (`int`):
            Rows of one optimizer step over all processes (per device x accumulation steps x processes).
        empty_ratio (`float`, *optional*):
            Empty samples per non-empty sample of the same type in an epoch; `None` keeps all of them.
        length_bucket_batches (`int`, *optional*, defaults to `1`):
            Batches per length-sorted group; 1 is plain random order.
        seed (`int`, *optional*, defaults to `0`):
            Seed of every draw.
    """

    def __init__(
        self,
        has_entity: Sequence[bool],
        type_ids: Sequence[int],
        lengths: Sequence[int],
        batch_size: int,
        empty_ratio: float | None = None,
        length_bucket_batches: int = 1,
        seed: int = 0,
    ) -> None:
        if not len(has_entity) == len(type_ids) == len(lengths):
            raise ValueError("has_entity, type_ids and lengths must have one entry per sample")
        if empty_ratio is not None and empty_ratio < 0:
            raise ValueError(f"empty_ratio must be >= 0 or None, got {empty_ratio}")
        if batch_size < 1 or length_bucket_batches < 1:
            raise ValueError("batch_size and length_bucket_batches must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.length_bucket_batches = length_bucket_batches
        self.seed = seed
        self.epoch = 0
        self.full = [i for i, entity in enumerate(has_entity) if entity or empty_ratio is None]
        # Per type: its empty samples in a fixed shuffled order, and how many of them an epoch takes.
        self.empty: list[tuple[list[int], int]] = []
        if empty_ratio is not None:
            entities, empties = defaultdict(int), defaultdict(list)
            for i, (entity, type_id) in enumerate(zip(has_entity, type_ids)):
                if entity:
                    entities[type_id] += 1
                else:
                    empties[type_id].append(i)
            for type_id in sorted(empties):
                order = empties[type_id]
                random.Random(f"{seed}-{type_id}").shuffle(order)
                self.empty.append((order, min(len(order), round(empty_ratio * entities[type_id]))))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose samples and order `__iter__` gives (the Trainer calls this every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.full) + sum(take for _, take in self.empty)

    def epoch_indices(self) -> list[int]:
        """The samples of the current epoch, before ordering."""
        chosen = list(self.full)
        for order, take in self.empty:
            start = self.epoch * take
            chosen += [order[(start + j) % len(order)] for j in range(take)]
        return chosen

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}-epoch-{self.epoch}")
        indices = self.epoch_indices()
        rng.shuffle(indices)
        if self.length_bucket_batches > 1:
            group = self.batch_size * self.length_bucket_batches
            batches = []
            for g in range(0, len(indices), group):
                ordered = sorted(indices[g : g + group], key=self.lengths.__getitem__)
                batches += [ordered[b : b + self.batch_size] for b in range(0, len(ordered), self.batch_size)]
            # Keep a short last batch last: the DataLoader cuts batches from the flat order.
            last = batches.pop() if len(indices) % self.batch_size else None
            rng.shuffle(batches)
            indices = [i for batch in batches + ([last] if last else []) for i in batch]
        return iter(indices)
