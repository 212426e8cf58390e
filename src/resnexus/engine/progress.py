"""Progress within a training epoch, for the PyTorch loop (engine/fit.py) and Keras' ``model.fit``
(engine/keras_fit.py) alike.

On an interactive terminal each framework draws its bar as before (tqdm, Keras' progress bar).
Where no one watches a bar (output redirected to a file, a batch job), an epoch of thousands of
images used to print nothing until it ended: :class:`ProgressLog` logs a line every ``interval``
seconds instead (``TrainConfig.progress_every``), with the step, images/s and the time left, as
timm and Keras do in logs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, NamedTuple

__all__ = ["ProgressLog", "ProgressModes", "progress_modes"]


class ProgressModes(NamedTuple):
    bar: bool  # a live bar on the terminal (stderr)
    lines: bool  # a log line every so often (ProgressLog)


def progress_modes(verbose: bool, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> ProgressModes:
    """A bar when ``verbose`` and stderr (the bar's stream) is a terminal; log lines unless that bar
    and the log (stdout, where the command writes its messages) are both on a terminal. Lines of a
    quiet run (``verbose=False``) go wherever its other progress messages go (DEBUG)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    bar = verbose and _isatty(stderr)
    return ProgressModes(bar=bar, lines=not (bar and _isatty(stdout)))


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream: not a terminal
        return False


def _duration(seconds: float) -> str:
    """``1:02:03`` / ``4:05``: hours only when there are any."""
    minutes, secs = divmod(round(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLog:
    """One epoch's progress as a log line every ``interval`` seconds of wall time (0: every step):
    ``epoch 3/90 | step 120/875 (14%) | 52.3 img/s | ETA 4:10``.

    ``steps`` is the epoch's number of steps; ``first_step`` the steps already done (a run resumed
    mid-epoch); ``log`` takes the line (``logger.info``); ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        description: str,
        steps: int,
        interval: float,
        log: Callable[[str], None],
        *,
        first_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.steps, self.interval, self.log, self.clock = description, steps, interval, log, clock
        self.step, self.first_step, self.images = first_step, first_step, 0
        self.started = self.last = clock()

    def update(self, images: int) -> None:
        """After each step: ``images`` is how many it trained on (all processes together)."""
        self.step += 1
        self.images += images
        now = self.clock()
        if now - self.last < self.interval or self.step >= self.steps:  # the epoch's own line follows the last
            return
        self.last = now
        self.log(self.line(now))

    def line(self, now: float) -> str:
        elapsed, done = now - self.started, self.step - self.first_step
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = (self.steps - self.step) * elapsed / done if done else 0.0
        percent = 100 * self.step // max(1, self.steps)
        return (
            f"{self.description} | step {self.step}/{self.steps} ({percent}%) | {rate:.1f} img/s | ETA {_duration(eta)}"
        )
