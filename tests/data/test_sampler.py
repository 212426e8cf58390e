"""Epoch batches: every image used, the same order on resume, and N ranks = one process."""

from __future__ import annotations

import re

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
    for step, together in enumerate(alone[: len(ranks[0])]):  # a last batch too small to share is dropped
        parts = [ranks[r][step] for r in range(world)]
        assert sorted(i for part in parts for i in part) == sorted(together)  # same images, same augmentation seeds
        assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 2
    remainder = n % batch
    assert len(alone) == n // batch + (remainder >= 2)
    assert len(ranks[0]) == n // batch + (remainder >= 2 * world)


def test_balanced_batches_draw_each_class_about_equally():
    labels = [0] * 16 + [1] * 4
    drawn = []
    for epoch in range(1, 11):
        batches = EpochBatches(labels, 5, seed=0, balance=True)
        batches.set_epoch(epoch)
        drawn += [labels[i] for batch in _indices(batches) for i in batch]
    assert len(drawn) == 200 and 0.4 < np.mean(drawn) < 0.6  # the 20 % class fills about half


def test_global_batch_too_small_for_two_images_per_process_is_refused():
    message = "--batch-size 7 is the global batch: 4 processes need at least 8 (2 images each, for BatchNorm)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        EpochBatches([0] * 10, 7, seed=0, world=4)
    EpochBatches([0] * 10, 8, seed=0, world=4)  # two each: accepted


# a representative subset of training-set sizes 20-60 and global batch sizes 2-16 (issue 15, item 8)
@pytest.mark.parametrize("n", [20, 21, 22, 23, 26, 29, 33, 37, 41, 42, 43, 50, 57, 60])
@pytest.mark.parametrize("batch", [4, 5, 6, 7, 8, 9, 10, 12, 13, 16])
def test_two_ranks_get_at_least_two_images_each_and_the_same_number_of_steps(n, batch):
    ranks = [EpochBatches(list(range(n)), batch, seed=5, rank=r, world=2) for r in range(2)]
    for epoch in (1, 2):
        for r in ranks:
            r.set_epoch(epoch)
        steps = [list(r) for r in ranks]
        assert len(steps[0]) == len(steps[1]) == len(ranks[0]) == len(ranks[1])  # DDP: the same steps everywhere
        assert all(len(share) >= 2 for rank in steps for share in rank)  # BatchNorm sees two images or more
        used = sorted(i for rank in steps for share in rank for i, _ in share)
        assert len(set(used)) == len(used) and len(used) == n - (n % batch if n % batch < 4 else 0)
        assert sum(r.images() for r in ranks) == len(used)


@pytest.mark.parametrize("batch", [2, 3])
def test_two_ranks_refuse_a_global_batch_below_four(batch):
    with pytest.raises(ValueError, match=f"--batch-size {batch} is the global batch: 2 processes need at least 4"):
        EpochBatches(list(range(30)), batch, seed=0, rank=0, world=2)
