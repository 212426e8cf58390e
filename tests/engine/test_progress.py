"""Progress within an epoch where no terminal shows a bar: a log line every ``progress_every`` seconds.

A 28,000-image epoch written to a file printed nothing for 15 minutes: the only progress display
was a tqdm bar, drawn on a terminal alone.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from resnexus.engine import train
from resnexus.engine.progress import ProgressLog, progress_modes
from tests.helpers import bright_and_dark_folder, tiny_config

# epoch 1/1 | step 3/7 (42%) | 12.5 img/s | ETA 0:01
LINE = re.compile(r"^epoch 1/1 \| step (\d+)/(\d+) \(\d+%\) \| \d+\.\d img/s \| ETA \d+:\d\d$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_report_step_rate_and_time_left():
    lines: list[str] = []
    now = [100.0]
    log = ProgressLog("epoch 2/5", steps=10, interval=30.0, log=lines.append, clock=lambda: now[0])
    for _ in range(3):  # 3 steps of 8 images in 20 s: no line before 30 s
        now[0] += 20 / 3
        log.update(8)
    assert lines == []
    now[0] = 160.0  # step 4 at 60 s: 32 images, 6 steps left at 15 s each
    log.update(8)
    assert lines == ["epoch 2/5 | step 4/10 (40%) | 0.5 img/s | ETA 1:30"]
    now[0] = 170.0
    log.update(8)  # 10 s after the last line: none
    assert len(lines) == 1


def test_a_resumed_epoch_counts_from_its_first_step_and_the_last_step_logs_nothing():
    lines: list[str] = []
    now = [0.0]
    log = ProgressLog("epoch 1/1", steps=4, interval=0.0, log=lines.append, first_step=2, clock=lambda: now[0])
    now[0] = 3600.0
    log.update(2)
    log.update(2)  # the epoch's last step: its own summary line follows
    assert lines == ["epoch 1/1 | step 3/4 (75%) | 0.0 img/s | ETA 1:00:00"]


def test_a_bar_on_a_terminal_and_lines_elsewhere():
    term, file = _Terminal(), io.StringIO()
    assert progress_modes(True, stdout=term, stderr=term) == (True, False)  # today's bar alone
    assert progress_modes(True, stdout=file, stderr=file) == (False, True)  # `train > log 2>&1`
    assert progress_modes(True, stdout=file, stderr=term) == (True, True)  # the bar, and lines in the file
    assert progress_modes(False, stdout=term, stderr=term) == (False, True)  # quiet: lines at DEBUG


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bright_and_dark_folder(tmp_path_factory.mktemp("data") / "halves", per_class=8, size=16)


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1 | step")]


def _train_and_collect(data: Path, out: Path, caplog: pytest.LogCaptureFixture, **changes: object) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="resnexus"):  # a quiet run (verbose=False) logs at DEBUG
        train(tiny_config(data, out, batch_size=2, val_fraction=0.0, test_fraction=0.0, **changes))
    return _progress_lines(caplog)


def test_a_training_epoch_logs_progress_lines_without_a_terminal(data, tmp_path, caplog):
    lines = _train_and_collect(data, tmp_path / "every", caplog, progress_every=0.0)  # pytest: no terminal
    assert [LINE.match(line).groups() for line in lines] == [(str(s), "8") for s in range(1, 8)]  # 16 images
    assert _train_and_collect(data, tmp_path / "never", caplog, progress_every=1e6) == []


@pytest.mark.slow  # a Keras run: ~15-30 s on 2 busy cores
def test_a_keras_training_epoch_logs_the_same_lines(data, tmp_path, caplog):
    pytest.importorskip("keras")
    lines = _train_and_collect(data, tmp_path / "every", caplog, framework="keras", progress_every=0.0)
    assert [LINE.match(line).groups() for line in lines] == [(str(s), "8") for s in range(1, 8)]
    assert _train_and_collect(data, tmp_path / "never", caplog, framework="keras", progress_every=1e6) == []
