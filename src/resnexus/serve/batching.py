"""Dynamic batching, as TorchServe and Triton do it: concurrent requests share one forward pass.

The event loop never runs the model. :meth:`Batcher.submit` puts an image on a queue and awaits a
future; one worker thread takes the first waiting image, gathers more until ``max_batch`` images
or ``max_wait_ms`` have passed, runs them as one batch and hands each caller its row. On 2 cores
a batch of 8 costs far less than 8 batches of 1, and health checks keep answering while the
worker computes. ``max_batch=1`` is batch-of-one serving through the same thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class _Job:
    crop: torch.Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()  # queued by close(): everything queued before it is still answered


class Batcher:
    """Gathers single images into batches for ``run`` (uint8 crops (B, 3, S, S) -> (B, classes)).

    ``on_batch(size)`` is called for every batch run (the server's batch-size histogram).
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], np.ndarray],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="resnexus-batcher", daemon=True)
        self._thread.start()

    async def submit(self, crop: torch.Tensor) -> np.ndarray:
        """The probability row of one uint8 crop, computed in some batch off the event loop."""
        if self._closed:
            raise RuntimeError("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(crop, future, loop))
        return await future

    def close(self, timeout: float | None = 60.0) -> None:
        """Refuse new images, answer every queued one, then stop the worker (graceful shutdown)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and whatever else arrives within the wait, up to max_batch; True when stopping."""
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return jobs, True
            jobs.append(item)
        return jobs, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            jobs, stopping = self._gather(item)
            try:
                rows = self.run(torch.stack([job.crop for job in jobs]))
                if self.on_batch is not None:
                    self.on_batch(len(jobs))
            except Exception as error:  # every caller in the batch gets the error, the worker lives on
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, error)
                continue
            for job, row in zip(jobs, rows):
                job.loop.call_soon_threadsafe(_settle, job.future, row, None)
        while True:  # anything queued after the stop mark (a race with close) is still answered
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.loop.call_soon_threadsafe(_settle, item.future, None, RuntimeError("the server is shutting down"))


def _settle(future: asyncio.Future, row: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():  # the caller went away (client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(row)
