"""Training in spawned worker processes: `compare` (one model per process, for its own peak memory)
and `train --folds K --jobs N` (fold runs side by side) share these.

A spawned process starts with logging unconfigured and with every core's worth of threads; these
helpers make it log as its parent does and take its share of the cores.

Workers never outlive their parent. A stop signal to the parent (SIGTERM, Ctrl-C) is passed on to
its workers, which save what they trained as a single run does, and the parent says how to resume.
A killed parent (SIGKILL, a crash) can do nothing, so each worker watches it (:func:`watch_parent`):
a thread that polls ``os.getppid()``. Chosen over Linux's ``prctl(PR_SET_PDEATHSIG)`` because it
works on macOS too, it fires when the parent *process* ends (PDEATHSIG fires when the parent
*thread* that started the worker ends, and compare starts its workers from pool threads), it has no
race with a parent that died before the call, and it lets the worker save before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from types import FrameType
from typing import Any

import torch

from .interrupt import StopOnSignal, TrainingInterrupted


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


# -- in a worker: stop with the parent ------------------------------------------------------------
_task_running = threading.Event()  # set while this worker runs a task (train, measure)
_stop_asked = False  # a stop signal reached this pool worker: it starts no further task
PARENT_POLL_SECONDS = 0.5
SAVE_GRACE_SECONDS = 30.0  # how long an orphaned worker may take to finish its step and save


@contextmanager
def running_task() -> Iterator[None]:
    """Mark a worker busy, so that :func:`watch_parent` lets it save before ending it."""
    _task_running.set()
    try:
        yield
    finally:
        _task_running.clear()


def watch_parent(parent_pid: int) -> threading.Thread:
    """End this worker when ``parent_pid`` is no longer its parent (killed, crashed): SIGTERM to
    itself first, so that a training saves at its next step (fit.py's StopOnSignal), then exit once
    the task has ended or after SAVE_GRACE_SECONDS. Polling, not PDEATHSIG: see the module docstring."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + SAVE_GRACE_SECONDS
        time.sleep(0.05)  # let the handler run before looking
        while _task_running.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(128 + signal.SIGTERM)  # an idle pool worker would otherwise wait for tasks forever

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _ask_stop(signum: int, frame: FrameType | None) -> None:
    """A pool worker's handler outside training: start no further task; a task past its start but
    not in its epochs (data checks, final evaluation) stops now, as SIGINT would stop it."""
    global _stop_asked
    _stop_asked = True
    if _task_running.is_set():
        raise KeyboardInterrupt


class NotStarted(Exception):
    """A task a stopped worker did not start."""


def _run_task(work: Callable[..., Any], task: tuple[Any, ...]) -> Any:
    global _stop_asked
    if _stop_asked:
        raise NotStarted("stopped before it started")
    with running_task():
        try:
            return work(*task)
        except KeyboardInterrupt:
            _stop_asked = True  # the stop reached the training loop, not _ask_stop
            raise


def _start_worker(threads: int, logging_setup: tuple[int, bool], parent_pid: int) -> None:
    for signum in StopOnSignal.HANDLED:  # an idle worker must not die of the parent's stop (a broken pool)
        signal.signal(signum, _ask_stop)
    watch_parent(parent_pid)
    torch.set_num_threads(threads)
    log_like_parent(*logging_setup)


# -- in the parent --------------------------------------------------------------------------------
class RunsStopped(KeyboardInterrupt):
    """A stop signal ended :func:`run_side_by_side` early. ``stopped`` maps each unfinished task's
    index to why: a :class:`TrainingInterrupted` (its progress saved), a KeyboardInterrupt (stopped outside
    its epochs: it resumes from its last checkpoint, if any), or None (never started)."""

    def __init__(self, signum: int, stopped: dict[int, BaseException | None]) -> None:
        super().__init__(signum)
        self.signum, self.stopped = signum, stopped

    def where(self, names: Sequence[str]) -> str:
        """``fold2: step 3 of epoch 2, refit: epoch 1`` for the tasks that had started."""
        parts = [
            f"{names[i]}: {error.where if isinstance(error, TrainingInterrupted) else 'stopped outside its epochs'}"
            for i, error in sorted(self.stopped.items())
            if error is not None and not isinstance(error, NotStarted)
        ]
        return ", ".join(parts) or "no run had started"


def run_side_by_side(
    work: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int
) -> Iterator[tuple[int, Any]]:
    """``(index, work(*tasks[index]))`` for every task, as each finishes.

    ``jobs`` 1 runs them here, in order. More runs them in that many ``spawn`` processes, each with
    an equal share of this process's threads: on a CPU, two single-threaded trainings side by side
    do more work per second than one two-threaded training (small convolutions do not keep two
    threads busy). ``work`` must be a module-level function and the tasks picklable.

    With jobs > 1, SIGINT / SIGTERM to this process stop every worker (each saves, as ``train``
    does), yield the tasks that finished meanwhile and raise :class:`RunsStopped`.
    """
    if jobs == 1:
        for i, task in enumerate(tasks):
            yield i, work(*task)
        return
    threads = threads_per_job(jobs)
    with (
        ProcessPoolExecutor(
            jobs,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads, logging_of_this_process(), os.getpid()),
        ) as pool,
        StopOnSignal() as stop,
    ):
        futures = {pool.submit(_run_task, work, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending and stop.signal is None:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()
            if pending:
                yield from _stop_workers(pool, futures, pending, stop.signal or signal.SIGTERM)
        except BaseException:  # a failed task or a second Ctrl-C: do not leave the others training on their own
            if hasattr(pool, "terminate_workers"):  # Python 3.14+
                pool.terminate_workers()
            else:
                for process in list((pool._processes or {}).values()):
                    process.terminate()
            raise


def _stop_workers(
    pool: ProcessPoolExecutor, futures: dict[Future, int], pending: Iterable[Future], signum: int
) -> Iterator[tuple[int, Any]]:
    """Pass the stop on to every worker, wait while they save, yield what finished, raise RunsStopped."""
    pending = [f for f in pending if not f.cancel()]  # the tasks no worker had taken are dropped
    stopped: dict[int, BaseException | None] = {i: None for f, i in futures.items() if f.cancelled()}
    for process in list((pool._processes or {}).values()):
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for future in wait(pending).done:
        try:
            result = future.result()
        except (Exception, KeyboardInterrupt) as error:  # saved (TrainingInterrupted), or not
            stopped[futures[future]] = error
        else:
            yield futures[future], result
    raise RunsStopped(signum, stopped)
