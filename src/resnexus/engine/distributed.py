"""Data-parallel training across processes (``torchrun``): the few collective steps the loop needs.

Under ``torchrun --nproc_per_node N -m resnexus train ...`` each process trains on its share of
every global batch (see :class:`~resnexus.data.sampler.EpochBatches`), DistributedDataParallel
averages the gradients (gloo on CPUs, NCCL on GPUs), rank 0 alone writes files, and evaluation
gathers every process's predictions so the metrics cover each image exactly once. Without
torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank) if self.enabled else torch.device("cuda")
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all processes (the tensor itself when alone)."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (so all stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def shard(self, n: int) -> list[int]:
        """This process's share of ``n`` evaluation images (strided: rank, rank + world, ...)."""
        return list(range(self.rank, n, self.world))

    def gather(
        self, indices: list[int], labels: np.ndarray, probs: np.ndarray, loss_sum: float
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Every process's predictions, back in the data set's order; mean loss over all of them."""
        if not self.enabled:
            return labels, probs, loss_sum / max(1, len(labels))
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (indices, labels, probs, loss_sum))
        order = np.argsort(np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts]), kind="stable")
        y = np.concatenate([p[1] for p in parts])[order]
        p_all = np.concatenate([p[2] for p in parts])[order]
        return y, p_all, sum(p[3] for p in parts) / max(1, len(y))


def torchrun_command(nproc: int, args: Sequence[str], torchrun_options: Sequence[str] = ()) -> list[str]:
    """``python -m torch.distributed.run ... -m resnexus ARGS``: ``nproc`` processes on this machine.

    ``train --nproc``, the DDP benchmark and the tests launch the same command line from here.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *torchrun_options,
        "-m",
        "resnexus",
        *args,
    ]


def setup(timeout_minutes: float = 10.0) -> Context:
    """Join the process group torchrun describes (once per process); alone, a one-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # After an elastic restart the agent's store still holds the dead workers' addresses;
            # a fresh key prefix per restart keeps the new workers from dialling them.
            base = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
            )
            store = dist.PrefixStore(f"resnexus/restart-{restart}", base)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
        atexit.register(_destroy)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # share the cores
    return Context(rank=rank, world=world, local_rank=local_rank)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
