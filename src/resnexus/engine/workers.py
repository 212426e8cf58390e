"""Training in spawned worker processes: `compare` (one model per process, for its own peak memory)
and `train --folds K --jobs N` (fold runs side by side) share these.

A spawned process starts with logging unconfigured and with every core's worth of threads; these
helpers make it log as its parent does and take its share of the cores.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import torch


def logging_of_this_process() -> tuple[int, bool]:
    """What a spawned child needs to log as this process does: the package logger's level, and
    whether its messages are shown at all (the CLI, or an application, configured a handler)."""
    package = logging.getLogger("resnexus")
    return package.getEffectiveLevel(), package.hasHandlers()


def log_like_parent(level: int, shown: bool) -> None:
    """Show a spawned process's messages as plain lines on stdout, as the CLI does, so a training log
    reads the same in a worker as in the parent."""
    package = logging.getLogger("resnexus")
    package.setLevel(level)
    if shown and not package.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` side-by-side trainings' equal share of this process's threads (at least one),
    so that together they do not oversubscribe the cores."""
    return max(1, torch.get_num_threads() // jobs)


def _start_worker(threads: int, logging_setup: tuple[int, bool]) -> None:
    torch.set_num_threads(threads)
    log_like_parent(*logging_setup)


def run_side_by_side(
    work: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int
) -> Iterator[tuple[int, Any]]:
    """``(index, work(*tasks[index]))`` for every task, as each finishes.

    ``jobs`` 1 runs them here, in order. More runs them in that many ``spawn`` processes, each with
    an equal share of this process's threads: on a CPU, two single-threaded trainings side by side
    do more work per second than one two-threaded training (small convolutions do not keep two
    threads busy). ``work`` must be a module-level function and the tasks picklable.
    """
    if jobs == 1:
        for i, task in enumerate(tasks):
            yield i, work(*task)
        return
    threads = threads_per_job(jobs)
    with ProcessPoolExecutor(
        jobs,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(threads, logging_of_this_process()),
    ) as pool:
        futures = {pool.submit(work, *task): i for i, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:  # a failed task or Ctrl-C: do not leave the others training on their own
            if hasattr(pool, "terminate_workers"):  # Python 3.14+
                pool.terminate_workers()
            else:
                for process in list((pool._processes or {}).values()):
                    process.terminate()
            raise
