"""The order in which an epoch visits the training images, from (seed, epoch) alone.

Because the order does not depend on what ran before, a run resumed at any epoch, or in the
middle of one (``set_epoch(epoch, start=...)``), visits exactly the images an uninterrupted run
would have visited. ``balance=True`` draws every class equally often, with replacement.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], seed: int, shuffle: bool = True, balance: bool = False) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed, self.shuffle, self.balance = seed, shuffle, balance
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Visit epoch ``epoch``'s order from position ``start`` on (0: the whole epoch)."""
        self.epoch, self.start = epoch, start

    def order(self) -> torch.Tensor:
        n = len(self.labels)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.balance:
            counts = np.bincount(self.labels)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(n, generator=generator)
        return torch.arange(n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, len(self.labels) - self.start)
