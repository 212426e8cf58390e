"""Dynamic batching, as TorchServe and Triton do it: concurrent requests share one forward pass.

The event loop never runs the model. :meth:`Batcher.submit` puts an image on a queue and awaits a
future; one worker thread takes the first waiting image, gathers more until ``max_batch`` images
or ``max_wait_ms`` have passed, runs them as one batch and hands each caller its row. On 2 cores
a batch of 8 costs far less than 8 batches of 1, and health checks keep answering while the
worker computes. ``max_batch=1`` is batch-of-one serving through the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .options import BOUNDS

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    crop: torch.Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()  # queued by close(): everything queued before it is still answered


class Unavailable(RuntimeError):
    """The batcher takes no more images: the server is shutting down, or its thread stopped."""


class Batcher:
    """Gathers single images into batches for ``run`` (uint8 crops (B, 3, S, S) -> (B, classes)).

    ``on_batch(size)`` is called for every batch run (the server's batch-size histogram). An error
    while forming or running one batch fails that batch's callers only; should the thread stop
    anyway, :attr:`failure` says why, and every queued and later caller gets :class:`Unavailable`
    at once instead of waiting forever.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        # no defaults here: ServeOptions has them; its ranges are checked again for a Batcher made directly
        BOUNDS["max_batch"].check("max_batch", max_batch)
        BOUNDS["max_wait_ms"].check("max_wait_ms", max_wait_ms)  # a wait of 1e15 ms overflows a timeout
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.failure: str | None = None  # why the thread stopped, when it stopped without close()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()  # a job is queued before the stop mark or the drain, or refused
        self._thread = threading.Thread(target=self._work, name="resnexus-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether images submitted now will be answered (not closed, the thread running)."""
        return not self._closed and self.failure is None and self._thread.is_alive()

    @property
    def stopped_message(self) -> str:
        """What callers and /readyz are told once the thread has stopped."""
        return f"the batching thread stopped ({self.failure or 'reason unknown'}): restart the server"

    async def submit(self, crop: torch.Tensor) -> np.ndarray:
        """The probability row of one uint8 crop, computed in some batch off the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self.failure is not None or not self._thread.is_alive():
                raise Unavailable(self.stopped_message)
            self._queue.put(_Job(crop, future, loop))
        return await future

    def close(self, timeout: float | None = 60.0) -> None:
        """Refuse new images, answer every queued one, then stop the worker (graceful shutdown)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    def _gather(self, jobs: list[_Job]) -> bool:
        """Add to ``jobs`` whatever arrives within the wait, up to max_batch; True when stopping."""
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return True
            jobs.append(item)
        return False

    def _run_batch(self, jobs: list[_Job]) -> None:
        """Answer ``jobs`` with their rows, or every one of them with the error the batch raised."""
        try:
            rows = self.run(torch.stack([job.crop for job in jobs]))
            if len(rows) != len(jobs):
                raise RuntimeError(f"the model returned {len(rows)} rows for a batch of {len(jobs)} images")
            if self.on_batch is not None:
                self.on_batch(len(jobs))
        except Exception as error:  # every caller in the batch gets the error, the worker lives on
            for job in jobs:
                _answer(job, None, error)
            return
        for job, row in zip(jobs, rows):
            _answer(job, row, None)

    def _work(self) -> None:
        jobs: list[_Job] = []
        try:
            stopping = False
            while not stopping:
                item = self._queue.get()
                if item is _STOP:
                    break
                jobs = [item]
                try:
                    stopping = self._gather(jobs)
                except Exception as error:  # forming the batch failed: fail it, keep serving
                    logger.exception("gathering a batch failed")
                    for job in jobs:
                        _answer(job, None, error)
                    continue
                self._run_batch(jobs)
                jobs = []
            reason = Unavailable("the server is shutting down")
        except BaseException as error:  # the thread is going down: nobody may wait on it any more
            self.failure = f"{type(error).__name__}: {error}"
            logger.critical(f"the batching thread stopped: {self.failure}", exc_info=True)
            reason = Unavailable(self.stopped_message)
            for job in jobs:
                _answer(job, None, reason)
        with self._lock:  # anything still queued (after the stop mark, or at a failure) is refused
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                if item is not _STOP:
                    _answer(item, None, reason)


def _answer(job: _Job, row: np.ndarray | None, error: BaseException | None) -> None:
    """Hand ``job``'s caller its row or error on its own event loop (gone if the loop closed)."""
    with contextlib.suppress(RuntimeError):  # the caller's event loop has closed: nobody is waiting
        job.loop.call_soon_threadsafe(_settle, job.future, row, error)


def _settle(future: asyncio.Future, row: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # the caller went away (client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(row)
