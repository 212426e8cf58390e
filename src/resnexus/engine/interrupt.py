"""Stopping a run politely: SIGINT / SIGTERM finish the current step, save, and say how to resume.

A second Ctrl-C stops at once (the checkpoint of the last finished epoch is still there).
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from .rundir import RunDir


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` after saving, when a stop signal arrived; ``str()`` is the resume hint.

    A study of several runs (cross-validation, compare) raises it too, with the command that
    continues the whole study (``resume_command``) and where its runs saved (``saved``).
    """

    def __init__(
        self, run_dir: Path, signum: int, where: str, resume_command: str | None = None, saved: str | None = None
    ) -> None:
        self.run_dir, self.signum, self.where = Path(run_dir), signum, where
        self.resume_command = resume_command or f"resnexus train --resume {shlex.quote(str(self.run_dir))}"
        self.saved = saved or str(RunDir(self.run_dir).last())
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after {where}; progress saved in {self.saved}. Continue with: {self.resume_command}"
        )

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by a worker process for its parent
        return type(self), (self.run_dir, self.signum, self.where, self.resume_command, self.saved)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by signal N"


class StopOnSignal:
    """Context manager: while inside, SIGINT and SIGTERM set ``signal`` instead of killing.

    Handlers can only be installed from the main thread; elsewhere this does nothing, and the
    default behaviour stays.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signal = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class StopRequested(KeyboardInterrupt):
    """A stop signal in a process that only waits for its workers (see :func:`raise_on_stop_signal`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def raise_on_stop_signal() -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM raises :class:`StopRequested` (SIGTERM would otherwise
    end this process at once and leave its workers training on their own), so that the waiting code
    stops its workers (each saves, as a single run does) and says how to resume. A later SIGTERM is
    ignored while the workers save; a later SIGINT stops at once. Main thread only, as StopOnSignal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise StopRequested(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handle) for signum in StopOnSignal.HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
