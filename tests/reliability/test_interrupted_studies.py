"""Stopped and killed studies of several runs (`train --folds`, `compare`): the printed command resumes
them to the uninterrupted result, and no worker process outlives its parent.

The subprocess tests start the real command, signal it while its workers train, and look for the
workers in /proc (Linux) by their parent's pid.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnexus.cli import main
from resnexus.engine import TrainConfig, load_checkpoint
from resnexus.engine import crossval as crossval_module
from resnexus.engine import fit as fit_module
from resnexus.engine.crossval import cross_validate
from resnexus.engine.interrupt import TrainingInterrupted
from tests.helpers import bright_and_dark_folder

RECIPE = (
    "model: resnet20_cifar\nmodel_config: {layers: [1, 1, 1]}\nimage_size: 16\nbatch_size: 4\nprecision: fp32\n"
    "workers: 0\ncheckpoint_every: 0\nval_fraction: 0.0\n"
)
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return bright_and_dark_folder(tmp_path_factory.mktemp("studies") / "data", per_class=12, size=16)


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        image_size=16,
        batch_size=4,
        epochs=2,
        precision="fp32",
        verbose=False,
        workers=0,
        checkpoint_every=0,
        val_fraction=0.0,
    )
    return TrainConfig(**(values | kw))


def _fold_results(run: Path) -> list[dict]:
    """cv_metrics.json's folds without what depends on the clock."""
    folds = json.loads((run / "cv_metrics.json").read_text())["folds"]
    return [{k: v for k, v in f.items() if k not in ("seconds", "run_dir")} for f in folds]


def _same_weights(a: Path, b: Path, runs: tuple[str, ...]) -> None:
    for run in runs:
        x = load_checkpoint(a / run / "checkpoints" / "best.pt")["state_dict"]
        y = load_checkpoint(b / run / "checkpoints" / "best.pt")["state_dict"]
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), run


@pytest.mark.slow
def test_a_stopped_cross_validation_resumes_with_the_printed_command_to_the_whole_result(
    data, tmp_path, monkeypatch, capsys
):
    """SIGTERM in step 2 of fold 2's epoch 2: fold 1 kept, fold 2 continued from its last.pt, then the
    refit; `resnexus train --resume RUN` (as printed) ends with the uninterrupted run's numbers."""
    whole = cross_validate(_config(data, tmp_path / "whole"), 2)
    real_progress, real_train, training = fit_module._progress, crossval_module.train, []

    def signal_in_fold_two(loader, description, *args, **kwargs):
        for step, batch in enumerate(real_progress(loader, description, *args, **kwargs)):
            if training[-1].endswith("fold2") and description.startswith("epoch 2/") and step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered now, handled by the training loop
            yield batch

    def tagged_train(config, splits=None):
        training.append(config.out)
        return real_train(config, splits=splits)

    monkeypatch.setattr(fit_module, "_progress", signal_in_fold_two)
    monkeypatch.setattr(crossval_module, "train", tagged_train)
    run = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted) as stopped:
        cross_validate(_config(data, run), 2)
    message = str(stopped.value)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "stopped after fold2: step 2 of epoch 2" in message
    assert message.endswith(f"Continue with: resnexus train --resume {run}")
    assert load_checkpoint(run / "fold2/checkpoints/last.pt")["partial"]["step"] == 2
    assert (run / "fold1" / "cv_run_finished.json").is_file() and not (run / "refit").exists()
    monkeypatch.setattr(fit_module, "_progress", real_progress)

    fold1_finished = (run / "fold1" / "cv_run_finished.json").stat().st_mtime_ns
    command = message.split("Continue with: ")[1]
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr()
    assert (run / "fold1" / "cv_run_finished.json").stat().st_mtime_ns == fold1_finished  # kept, not retrained
    assert _fold_results(run) == _fold_results(whole.run_dir)
    record = json.loads((run / "cv_metrics.json").read_text())
    assert record["mean"] == json.loads((whole.run_dir / "cv_metrics.json").read_text())["mean"]
    assert record["refit"]["status"] == "done"
    _same_weights(run, whole.run_dir, ("fold1", "fold2", "refit"))
    for name in ("oof_predictions.csv", "calibration.json"):  # the kept fold's predictions and the resumed one's
        assert (run / name).read_bytes() == (whole.run_dir / name).read_bytes(), name


def test_resuming_one_fold_alone_names_the_command_that_resumes_the_cross_validation(data, tmp_path, capsys):
    run = tmp_path / "cv"
    cross_validate(_config(data, run, epochs=1), 2, refit=False)
    assert main(["train", "--resume", str(run / "fold2")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'fold2'} is one run of the cross-validation {run}" in err
    assert f"continue the whole cross-validation with: resnexus train --resume {run}" in err
    assert main(["train", "--resume", str(run), "--folds", "3"]) == 2
    assert "continues a 2-fold cross-validation without refit; it cannot change --folds" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0  # finished: every run kept, the record rewritten
    assert "training runs finished before" not in capsys.readouterr().err


# -- real processes -----------------------------------------------------------------------------------
def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnexus", *args]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": src}


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert process.poll() is None, f"ended before {what}: {process.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _epoch_saved(run: Path, epoch: int):
    def saved() -> bool:
        last = run / "checkpoints" / "last.pt"
        try:
            return last.is_file() and load_checkpoint(last)["epoch"] >= epoch
        except Exception:  # being replaced
            return False

    return saved


def _start(args: list[str], workers: int) -> tuple[subprocess.Popen, set[int]]:
    process = subprocess.Popen(_command(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found: set[int] = set()

    def started() -> bool:
        found.update(p for p in _children(process.pid) if "resource_tracker" not in _cmdline(p))
        return len(found) >= workers

    _wait_for(started, 120, f"{workers} worker processes", process)
    return process, found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _cleanup(process: subprocess.Popen, workers: set[int]) -> None:
    for pid in [process.pid, *workers]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def _cv_args(data: Path, recipe: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--config", str(recipe), "--out", str(out), "--epochs", str(epochs)]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="finds the workers in /proc")
def test_sigkill_of_train_folds_jobs_takes_its_workers_down(data, recipe, tmp_path):
    out = tmp_path / "killed"
    process, workers = _start([*_cv_args(data, recipe, out, 30), "--folds", "2", "--jobs", "2"], workers=2)
    try:
        _wait_for(_epoch_saved(out / "fold1", 1), 120, "fold 1's first epoch", process)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed parent"
        assert load_checkpoint(out / "fold1/checkpoints/last.pt")["epoch"] < 30  # they did not train on
    finally:
        _cleanup(process, workers)


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="finds the workers in /proc")
def test_sigterm_of_train_folds_jobs_saves_and_the_printed_command_finishes_it(data, recipe, tmp_path):
    whole = tmp_path / "whole"
    args = [*_cv_args(data, recipe, whole, 3), "--folds", "2", "--jobs", "2"]
    subprocess.run(_command(*args), env=_env(), check=True, capture_output=True, timeout=300)
    out = tmp_path / "stopped"
    process, workers = _start([*_cv_args(data, recipe, out, 3), "--folds", "2", "--jobs", "2"], workers=2)
    try:
        _wait_for(_epoch_saved(out / "fold1", 1), 120, "fold 1's first epoch", process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert not [pid for pid in workers if _alive(pid)]
        assert "Traceback" not in stderr
        # the folds run side by side: which are unfinished when the signal lands depends on timing
        # (fold 1 may end its last epoch first), and the message names those
        assert re.search(r"resnexus train: SIGTERM: stopped after fold[12]: ", stderr), stderr
        command = stderr.split("Continue with: ")[1].strip()
        assert command == f"resnexus train --resume {out} --jobs 2"
    finally:
        _cleanup(process, workers)
    resumed = subprocess.run(
        _command(*shlex.split(command)[1:]), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _fold_results(out) == _fold_results(whole)
    _same_weights(out, whole, ("fold1", "fold2", "refit"))
    for name in ("oof_predictions.csv", "calibration.json"):  # written by the workers, gathered by the parent
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="finds the workers in /proc")
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_compare_jobs_workers_stop_with_their_parent(data, recipe, tmp_path, stop):
    out = tmp_path / "cmp"
    args = ["compare", "--models", "resnet20_cifar,resnet32_cifar", "--data", str(data), "--out", str(out)]
    args += ["--epochs", "30" if stop == signal.SIGKILL else "3", "--image-size", "16", "--batch-size", "4"]
    args += ["--precision", "fp32", "--workers", "0", "--checkpoint-every", "0", "--jobs", "2"]
    process, workers = _start(args, workers=2)
    try:
        _wait_for(_epoch_saved(out / "resnet32_cifar", 1), 120, "a first epoch", process)
        process.send_signal(stop)
        if stop == signal.SIGKILL:
            assert process.wait(timeout=30) == -signal.SIGKILL
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed parent"
            return
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert not [pid for pid in workers if _alive(pid)] and "Traceback" not in stderr
        command = stderr.split("Continue with: ")[1].strip()
        assert command == "resnexus " + shlex.join([*args, "--resume"])
    finally:
        _cleanup(process, workers)
    resumed = subprocess.run(
        _command(*shlex.split(command)[1:]), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "comparison.md").is_file()
