"""torchrun with 2 CPU processes (gloo): the same weights as one process, one report, no hang.

The model is LeNet (no BatchNorm): per-process BatchNorm statistics legitimately differ from one
process's, and PyTorch's SyncBatchNorm runs on GPUs only. With the same global batch and seed,
2 processes must then end with one process's weights up to float rounding.
"""

from __future__ import annotations

import csv
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
from resnexus.engine.distributed import torchrun_command
from tests.helpers import bright_and_dark_folder

pytestmark = pytest.mark.slow
# SGD, not the default AdamW: Adam divides by the gradient scale, which magnifies the rounding
# differences of near-zero gradients between one process and two beyond any useful tolerance.
ARGS = [
    "--model",
    "lenet",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--val-fraction",
    "0.2",
    "--test-fraction",
    "0.2",
    "--workers",
    "0",
    "--checkpoint-every",
    "0",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return bright_and_dark_folder(
        tmp_path_factory.mktemp("ddp") / "data", per_class=27, size=36
    )  # 54 images: uneven shards for validation and test


def _config_file(tmp: Path) -> Path:
    path = tmp / "lenet.yaml"
    path.write_text("model_config: {img_size: 32}\n")
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return torchrun_command(nproc, ["train", *args], torchrun_options=extra)


def test_two_processes_end_with_the_weights_of_one(data, tmp_path):
    config = _config_file(tmp_path)
    common = ["--data", str(data), "--config", str(config), "--epochs", "3", *ARGS]
    alone = subprocess.run(
        [sys.executable, "-m", "resnexus", "train", *common, "--out", str(tmp_path / "one")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr
    two = subprocess.run(
        [sys.executable, "-m", "resnexus", "train", "--nproc", "2", *common, "--out", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert "torch.distributed.run --standalone --nproc_per_node=2" in two.stdout
    assert two.stdout.count("report: ") == 1 and "x 2 processes" in two.stdout  # rank 0 alone logs

    a, b = (load_checkpoint(tmp_path / run / "checkpoints/last.pt") for run in ("one", "two"))
    for key in a["model_state"]:
        torch.testing.assert_close(b["model_state"][key], a["model_state"][key], atol=2e-5, rtol=1e-4)
    history = list(csv.DictReader((tmp_path / "two" / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]  # one writer
    one_metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two_metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two_metrics["n"] == one_metrics["n"] == 11  # every test image exactly once (11 = 6 + 5 shards)
    assert two_metrics["confusion_matrix"] == one_metrics["confusion_matrix"]
    for h1, h2 in zip(json.loads(json.dumps(a["history"])), b["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-4)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_for_epoch(out: Path, epoch: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        last = out / "checkpoints" / "last.pt"
        if last.is_file() and load_checkpoint(last)["epoch"] >= epoch:
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"epoch {epoch} not reached")


def _start(data: Path, tmp: Path, out: Path, epochs: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    args = ["--data", str(data), "--config", str(_config_file(tmp)), "--epochs", str(epochs), "--out", str(out), *ARGS]
    return subprocess.Popen(
        _torchrun(*args, extra=extra),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_killed_rank_ends_the_job_then_it_resumes(data, tmp_path):
    out = tmp_path / "run"
    job = _start(data, tmp_path, out, epochs=60)
    _wait_for_epoch(out, 1, job)
    workers = _children(job.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        job.wait(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0 and time.monotonic() - killed < 90  # no hang
    saved = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]
    assert saved >= 1
    resumed = subprocess.run(_torchrun("--resume", str(out)), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch {saved}" in resumed.stdout
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 60


def test_elastic_restart_resumes_from_the_last_checkpoint(data, tmp_path):
    out = tmp_path / "elastic"
    job = _start(data, tmp_path, out, epochs=40, extra=("--max-restarts", "1"))
    _wait_for_epoch(out, 1, job)
    os.kill(_children(job.pid)[0], signal.SIGKILL)
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr
    assert "resuming" in stdout and load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 40


def test_in_process_training_is_unchanged_without_torchrun(data, tmp_path):
    result = train(
        TrainConfig(
            data=str(data),
            out=str(tmp_path / "plain"),
            model="lenet",
            model_config={"img_size": 32},
            image_size=32,
            batch_size=8,
            epochs=1,
            precision="fp32",
            verbose=False,
        )
    )
    assert result.metrics["n"] == 11


def test_a_last_batch_of_one_image_per_process_is_dropped_under_torchrun(tmp_path):
    """22 training images at a global batch of 4: the last batch (2 images) would give each of 2
    processes one image, which BatchNorm cannot train on; it is dropped on both (issue 15, item 8)."""
    data = bright_and_dark_folder(tmp_path / "data", per_class=11, size=20)
    config = tmp_path / "tiny.yaml"
    config.write_text("model_config: {layers: [1, 1, 1]}\n")
    args = ["--data", str(data), "--config", str(config), "--out", str(tmp_path / "run"), "--model", "resnet20_cifar"]
    args += ["--image-size", "16", "--batch-size", "4", "--epochs", "2", "--val-fraction", "0", "--test-fraction", "0"]
    args += ["--precision", "fp32", "--workers", "0", "--cache-dir", "off"]
    run = subprocess.run(_torchrun(*args), env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "2 epochs x 5 steps" in run.stdout  # 5 full batches; the 6th (2 images) is dropped
    assert [int(r["epoch"]) for r in csv.DictReader((tmp_path / "run" / "history.csv").open())] == [1, 2]
