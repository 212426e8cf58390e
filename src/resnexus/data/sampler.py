"""Which images each training step sees, from (seed, epoch) alone, for one process or many.

An epoch's order is a permutation drawn from (seed, epoch); it is cut into *global* batches of
``batch_size`` images, and with ``world`` processes rank ``r`` takes the r-th of ``world`` nearly
equal parts of every global batch. So

* a run resumed at any epoch, or mid-epoch (``set_epoch(epoch, start=step)``), sees exactly the
  batches an uninterrupted run would have seen;
* N processes together see exactly the batches one process sees with the same global batch.

Each item is ``(index, sample_seed)``: :class:`~resnexus.data.ImageDataset` seeds the image's
augmentation with it, so an image is augmented the same way whichever process or DataLoader
worker loads it. ``balance=True`` draws every class equally often (with replacement).

BatchNorm cannot train on one image, and under DDP each process normalises its own share, so every
process gets at least :data:`MIN_SHARE` images of every step: a last global batch smaller than
``MIN_SHARE * world`` is dropped (on every rank alike: DDP needs the same number of steps
everywhere), and a global batch size that cannot give each process two images is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

MIN_SHARE = 2  # images per process and step: BatchNorm needs more than one value per channel


def check_global_batch(batch_size: int, world: int) -> None:
    """Refuse a global batch that cannot give each of ``world`` processes :data:`MIN_SHARE` images.

    EpochBatches calls it in every process; ``train --nproc`` calls it before launching torchrun, so
    the error is one line, printed once. One process keeps its old rule (only a last batch of one
    image is dropped).
    """
    if world > 1 and batch_size < MIN_SHARE * world:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch: {world} processes need at least "
            f"{MIN_SHARE * world} ({MIN_SHARE} images each, for BatchNorm)"
        )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one image in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        balance: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        check_global_batch(batch_size, world)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.seed, self.shuffle, self.balance = batch_size, seed, shuffle, balance
        self.rank, self.world = rank, world
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``'s batches from step ``start`` on (0: the whole epoch)."""
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        n = len(self.labels)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.balance:
            counts = np.bincount(self.labels)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            return torch.multinomial(weights, n, replacement=True, generator=generator).numpy()
        if self.shuffle:
            return torch.randperm(n, generator=generator).numpy()
        return np.arange(n)

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches (all processes together), the too-small last one dropped."""
        order = self.order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if batches and len(batches[-1]) < self.smallest:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches()[self.start :]:
            share = np.array_split(batch, self.world)[self.rank]
            yield [(int(i), sample_seed(self.seed, self.epoch, int(i))) for i in share]

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        full, rest = divmod(n, b)
        return max(0, full + (rest >= self.smallest) - self.start)

    @property
    def smallest(self) -> int:
        """The fewest images a global batch may hold: :data:`MIN_SHARE` for every process."""
        return MIN_SHARE * self.world

    def images(self) -> int:
        """Images this process sees in the remaining steps of the epoch."""
        return sum(len(np.array_split(b, self.world)[self.rank]) for b in self.global_batches()[self.start :])

    def global_size(self, step: int) -> int:
        """Images in global batch ``step`` (0-based) of the current epoch: all processes together."""
        n, b = len(self.labels), self.batch_size
        return min(b, n - step * b)
