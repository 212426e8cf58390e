"""Epoch batches: every image used, the same order on resume, and N ranks = one process."""

from __future__ import annotations

import numpy as np
import pytest

from resnexus.data.sampler import EpochBatches, sample_seed


def _indices(batches: EpochBatches) -> list[list[int]]:
    return [[i for i, _ in batch] for batch in batches]


def test_every_image_is_used_unless_one_is_left_alone():
    sizes = [len(b) for b in EpochBatches([0] * 87, 32, seed=0)]
    assert sizes == [32, 32, 23]  # no photo skipped
    assert [len(b) for b in EpochBatches([0] * 33, 32, seed=0)] == [32]  # a batch of one breaks BatchNorm
    batches = EpochBatches([0] * 87, 32, seed=0)
    assert sorted(i for b in _indices(batches) for i in b) == list(range(87)) and len(batches) == 3
    assert batches.images() == 87 and [batches.global_size(s) for s in range(3)] == [32, 32, 23]


def test_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    a, b = EpochBatches([0] * 50, 8, seed=3), EpochBatches([0] * 50, 8, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    assert full == list(b)  # same seed, same epoch: same batches and sample seeds
    b.set_epoch(3)
    assert _indices(b) != _indices(a)
    b.set_epoch(2, start=4)
    assert list(b) == full[4:] and len(b) == len(full) - 4
    assert full[0][0][1] == sample_seed(3, 2, full[0][0][0])


@pytest.mark.parametrize("n, batch, world", [(40, 8, 2), (45, 8, 2), (47, 12, 4), (43, 8, 3)])
def test_ranks_split_every_global_batch_exactly(n, batch, world):
    alone = list(EpochBatches(list(range(n)), batch, seed=1))
    ranks = [list(EpochBatches(list(range(n)), batch, seed=1, rank=r, world=world)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank takes the same number of steps
    for step, together in enumerate(alone):
        parts = [ranks[r][step] for r in range(world)]
        assert sorted(i for part in parts for i in part) == sorted(together)  # same images, same augmentation seeds
        assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 1
    remainder = n % batch
    assert len(alone) == n // batch + (remainder >= 2)
    assert len(ranks[0]) == n // batch + (remainder >= max(2, world))


def test_balanced_batches_draw_each_class_about_equally():
    labels = [0] * 16 + [1] * 4
    drawn = []
    for epoch in range(1, 11):
        batches = EpochBatches(labels, 5, seed=0, balance=True)
        batches.set_epoch(epoch)
        drawn += [labels[i] for batch in _indices(batches) for i in batch]
    assert len(drawn) == 200 and 0.4 < np.mean(drawn) < 0.6  # the 20 % class fills about half


def test_global_batch_smaller_than_the_number_of_processes_is_refused():
    with pytest.raises(ValueError, match="global batch size \\(2\\) must be at least the number of processes \\(4\\)"):
        EpochBatches([0] * 10, 2, seed=0, world=4)
