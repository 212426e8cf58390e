"""Stopping a run politely: SIGINT / SIGTERM finish the current step, save, and say how to resume.

A second Ctrl-C stops at once (the checkpoint of the last finished epoch is still there).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` after saving, when a stop signal arrived; ``str()`` is the resume hint."""

    def __init__(self, run_dir: Path, signum: int, where: str) -> None:
        self.run_dir, self.signum, self.where = Path(run_dir), signum, where
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after {where}; progress saved in {self.run_dir / 'checkpoints' / 'last.pt'}. "
            f"Continue with: resnexus train --resume {self.run_dir}"
        )

    def __str__(self) -> str:
        return str(self.args[0])

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
