"""Killed and stopped runs: nothing finished is lost, and resuming ends exactly where a whole run ends.

The subprocess tests start the real `resnexus train` command, stop it with a real signal while it
trains, resume it, and compare the final weights bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnexus.engine import TrainConfig, load_checkpoint, train
from resnexus.engine import fit as fit_module
from resnexus.engine.checkpoint import save_atomic
from resnexus.engine.interrupt import TrainingInterrupted
from resnexus.engine.resume import resume_config
from tests.helpers import bright_and_dark_folder

RECIPE = (
    "model: resnet20_cifar\nmodel_config: {layers: [1, 1, 1]}\nimage_size: 32\nbatch_size: 4\nprecision: fp32\n"
    "workers: 0\ncheckpoint_every: 0\n"
)  # last.pt after every epoch, so a kill can land after one


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return bright_and_dark_folder(tmp_path_factory.mktemp("interrupt") / "data", per_class=20, size=40)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnexus", "train", *args]


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(data: Path, recipe: Path, out: Path, epochs: int) -> subprocess.Popen:
    args = ["--data", str(data), "--config", str(recipe), "--out", str(out), "--epochs", str(epochs)]
    return subprocess.Popen(_command(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(out: Path, epoch: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll last.pt (written atomically, so it is always whole) until it holds ``epoch``."""
    deadline = time.monotonic() + timeout
    last = out / "checkpoints" / "last.pt"
    while time.monotonic() < deadline:
        assert process.poll() is None, f"training ended early: {process.communicate()}"
        if last.is_file() and load_checkpoint(last)["epoch"] >= epoch:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model_state"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted run of the command the tests interrupt."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp / "whole"
    args = ["--data", str(data), "--config", str(recipe), "--out", str(out), "--epochs", "5"]
    subprocess.run(_command(*args), env=_env(), check=True, capture_output=True, timeout=300)
    return recipe, out


def _assert_same_run(out: Path, reference_out: Path) -> None:
    a, b = _final_state(out), _final_state(reference_out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ours = json.loads((out / "metrics.json").read_text())
    theirs = json.loads((reference_out / "metrics.json").read_text())
    assert ours["accuracy"] == theirs["accuracy"] and ours["loss"] == theirs["loss"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_with_the_same_weights(data, reference, tmp_path):
    recipe, whole = reference
    out = tmp_path / "killed"
    process = _start(data, recipe, out, epochs=5)
    _wait_for_epoch(out, 2, process)
    process.send_signal(signal.SIGKILL)  # no handler can run: only what is on disk survives
    assert process.wait(timeout=30) == -signal.SIGKILL
    saved = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]
    assert 2 <= saved < 5
    resumed = subprocess.run(_command("--resume", str(out)), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch {saved}" in resumed.stdout
    _assert_same_run(out, whole)


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(data, reference, tmp_path):
    recipe, whole = reference
    out = tmp_path / "stopped"
    process = _start(data, recipe, out, epochs=5)
    _wait_for_epoch(out, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: stopped after" in stderr and f"Continue with: resnexus train --resume {out}" in stderr
    assert "Traceback" not in stderr
    resumed = subprocess.run(_command("--resume", str(out)), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, whole)


def _tiny(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        image_size=32,
        batch_size=4,
        epochs=3,
        precision="fp32",
        verbose=False,
        workers=0,
        checkpoint_every=0,
        ema_decay=0.9,
        mixup=0.2,
        **kw,
    )


def test_a_stop_signal_mid_epoch_saves_the_position_and_resume_replays_the_rest(data, tmp_path, monkeypatch):
    """SIGINT during step 3 of epoch 2: the step finishes, last.pt records the position, resuming
    from there (RNG, sums, EMA, optimizer) gives the uninterrupted run's weights and history."""
    whole = train(_tiny(data, tmp_path / "whole"))
    real_progress = fit_module._progress

    def signal_in_epoch_two(loader, description, *args, **kwargs):
        for step, batch in enumerate(real_progress(loader, description, *args, **kwargs)):
            if description.startswith("epoch 2/") and step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # delivered now, handled by the training loop
            yield batch

    monkeypatch.setattr(fit_module, "_progress", signal_in_epoch_two)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    with pytest.raises(TrainingInterrupted) as stopped:
        train(_tiny(data, tmp_path / "cut"))
    assert stopped.value.exit_code == 130 and "step 3 of epoch 2" in str(stopped.value)
    last = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert last["epoch"] == 1 and last["partial"]["step"] == 3 and last["partial"]["seen"] == 12
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    monkeypatch.setattr(fit_module, "_progress", real_progress)

    resumed = train(resume_config(tmp_path / "cut"))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    a = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # EMA weights
    assert "partial" not in b and resumed.metrics["accuracy"] == whole.metrics["accuracy"]


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = save_atomic({"epoch": 1, "weights": torch.ones(3)}, tmp_path / "last.pt")
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_atomic({"epoch": 1}, tmp_path / "best.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
