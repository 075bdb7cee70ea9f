"""FewShotSampler: the empty-sample ratio per type, rotation over epochs, length buckets, determinism."""

import collections

import pytest

from cllmfs_trainer.training.sampler import FewShotSampler

# 3 types; type 1: 2 samples with an entity and 6 without; type 2: 1 and 5; type 3: 0 and 3.
HAS_ENTITY = [1, 1, 0, 0, 0, 0, 0, 0] + [1, 0, 0, 0, 0, 0] + [0, 0, 0]
TYPE_IDS = [1] * 8 + [2] * 6 + [3] * 3
LENGTHS = [10 + (7 * i) % 23 for i in range(len(HAS_ENTITY))]


def sampler(**kw):
    kw = {"batch_size": 2, "seed": 0, **kw}
    return FewShotSampler(HAS_ENTITY, TYPE_IDS, LENGTHS, **kw)


def test_without_options_every_sample_once_per_epoch():
    s = sampler()
    assert len(s) == len(HAS_ENTITY) and sorted(s) == list(range(len(HAS_ENTITY)))


def test_empty_ratio_keeps_every_entity_sample_and_r_empty_ones_per_type():
    s = sampler(empty_ratio=1.0)
    assert len(s) == 3 + 2 + 1  # entity samples + (2 for type 1, 1 for type 2, 0 for type 3)
    for epoch in range(4):
        s.set_epoch(epoch)
        chosen = list(s)
        assert sorted(chosen) == sorted(s.epoch_indices()) and len(chosen) == len(s)
        assert {0, 1, 8} <= set(chosen)
        empties = collections.Counter(TYPE_IDS[i] for i in chosen if not HAS_ENTITY[i])
        assert empties == {1: 2, 2: 1}


def test_empty_samples_rotate_so_all_are_seen():
    s = sampler(empty_ratio=1.0)
    seen = set()
    for epoch in range(6):
        s.set_epoch(epoch)
        seen |= {i for i in s if not HAS_ENTITY[i]}
    assert seen == {i for i in range(14) if not HAS_ENTITY[i]}  # types 1 and 2: all of their empty samples


def test_order_depends_on_seed_and_epoch_only():
    a, b = sampler(empty_ratio=0.5), sampler(empty_ratio=0.5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)


def test_length_buckets_reduce_padding_and_keep_the_samples():
    def padding(order, batch=2):
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(max(LENGTHS[j] for j in b) * len(b) - sum(LENGTHS[j] for j in b) for b in batches)

    plain, bucketed = sampler(), sampler(length_bucket_batches=4)
    waste_plain = waste_bucketed = 0
    for epoch in range(10):
        plain.set_epoch(epoch)
        bucketed.set_epoch(epoch)
        assert sorted(bucketed) == sorted(plain)
        waste_plain += padding(list(plain))
        waste_bucketed += padding(list(bucketed))
    assert waste_bucketed < waste_plain


@pytest.mark.parametrize("kw", [{"empty_ratio": -1}, {"length_bucket_batches": 0}, {"batch_size": 0}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        sampler(**kw)
