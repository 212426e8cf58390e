"""Resuming a run means the same run: absolute paths in its config, the same images (fingerprinted in
last.pt), no option that would change it, except a longer --epochs (issue 15, item 2)."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.cli import main
from resnexus.engine import TrainConfig, load_checkpoint, train
from resnexus.engine.checkpoint import read_resume_state
from resnexus.engine.config import complete_config
from resnexus.engine.resume import resume_config
from resnexus.models.weights import WeightsError
from tests.helpers import bright_and_dark_folder

ARGS = [
    "--model",
    "resnet20_cifar",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--val-fraction",
    "0.25",
    "--test-fraction",
    "0.25",
    "--workers",
    "0",
    "--checkpoint-every",
    "0",
    "--cache-dir",
    "off",
]


def _recipe(tmp: Path) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text("model_config: {layers: [1, 1, 1]}\n")
    return path


def _train_cli(tmp: Path, data: str, out: str, epochs: int) -> None:
    assert (
        main(["train", "--data", data, "--out", out, "--config", str(_recipe(tmp)), "--epochs", str(epochs), *ARGS])
        == 0
    )


def _history_epochs(run: Path) -> list[int]:
    return [int(row["epoch"]) for row in csv.DictReader((run / "history.csv").open())]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.rstrip("\n")


def test_complete_config_makes_every_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bright_and_dark_folder(tmp_path / "data", per_class=2, size=8)
    (tmp_path / "w.pt").write_bytes(b"")
    config = complete_config(
        TrainConfig(data="data", out="runs/x", model="lenet", cache_dir="cache", weights="w.pt", weights_dir="wd")
    )
    assert (config.data, config.out, config.cache_dir) == tuple(str(tmp_path / p) for p in ("data", "runs/x", "cache"))
    assert (config.weights, config.weights_dir) == (str(tmp_path / "w.pt"), str(tmp_path / "wd"))
    assert complete_config(TrainConfig(data="data", model="lenet", cache_dir="off")).cache_dir == "off"
    assert complete_config(TrainConfig(data="data", model="lenet")).out == str(tmp_path / "runs" / "data-lenet")


def test_resume_from_another_directory_trains_on_the_run_s_own_data(tmp_path, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    bright_and_dark_folder(first / "data", per_class=12, size=20)
    bright_and_dark_folder(elsewhere / "data", per_class=5, size=20, seed=1)  # a folder of the same name
    monkeypatch.chdir(first)
    _train_cli(tmp_path, "data", "run", epochs=1)
    run = first / "run"
    assert load_checkpoint(run / "checkpoints/last.pt")["config"]["data"] == str(first / "data")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data", str(first / "data")]) == 0  # the same
    assert _history_epochs(run) == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["n"] == 6  # first/data's 24 images: 6 tested


def test_resume_refuses_data_that_changed_naming_the_files(tmp_path, capsys):
    data = bright_and_dark_folder(tmp_path / "data", per_class=12, size=20)
    run = tmp_path / "run"
    _train_cli(tmp_path, str(data), str(run), epochs=1)
    assert load_checkpoint(run / "checkpoints/last.pt")["data"]["images"] == 24
    metrics = (run / "metrics.json").read_text()
    (data / "bright" / "0.png").unlink()
    (data / "dark" / "1.png").unlink()
    pixels = np.random.default_rng(7).integers(140, 230, (20, 20, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(data / "bright" / "new.png")
    assert main(["train", "--resume", str(run)]) == 2
    assert _error_line(capsys) == (
        f"resnexus train: error: {run} was trained on 24 images of {data}; {data} now has 23 "
        "(2 missing: bright/0.png, dark/1.png; 1 new: bright/new.png): restore them, or train a new run with another --out"
    )
    assert (run / "metrics.json").read_text() == metrics  # nothing evaluated, nothing overwritten


def test_resume_refuses_a_changed_image(tmp_path, capsys):
    data = bright_and_dark_folder(tmp_path / "data", per_class=12, size=20)
    run = tmp_path / "run"
    _train_cli(tmp_path, str(data), str(run), epochs=1)
    pixels = np.random.default_rng(8).integers(140, 230, (24, 24, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(data / "bright" / "3.png")  # same name, other image
    assert main(["train", "--resume", str(run)]) == 2
    assert _error_line(capsys) == (
        f"resnexus train: error: {run} was trained on 24 images of {data}; {data} now has 24 "
        "(1 changed (size or class): bright/3.png): restore them, or train a new run with another --out"
    )


def test_resume_refuses_every_option_that_would_change_the_run_in_one_line(tmp_path, capsys):
    data = bright_and_dark_folder(tmp_path / "data", per_class=12, size=20)
    other = bright_and_dark_folder(tmp_path / "other", per_class=6, size=20)
    run = tmp_path / "run"
    _train_cli(tmp_path, str(data), str(run), epochs=2)
    argv = ["train", "--resume", str(run), "--data", str(other), "--lr", "0.3", "--model", "lenet"]
    assert main([*argv, "--batch-size", "8", "--image-size", "32", "--epochs", "1", "--workers", "0"]) == 2
    assert _error_line(capsys) == (
        f"resnexus train: error: --resume {run} continues the run as it was started; it cannot change "
        "--data, --lr, --model, --image-size, --epochs 1 (shorter than its 2) (only a longer --epochs, --workers, "
        "--cache-dir, --checkpoint-every and --progress-every): drop them, or start a new run with another --out"
    )
    assert main(["train", "--resume", str(run), "--config", str(_recipe(tmp_path))]) == 2
    assert "it cannot change --config (only" in _error_line(capsys)
    assert _history_epochs(run) == [1, 2]  # untouched


def test_a_longer_epochs_continues_the_run_with_the_schedule_stretched(tmp_path):
    data = bright_and_dark_folder(tmp_path / "data", per_class=12, size=20)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--config",
                str(_recipe(tmp_path)),
                "--epochs",
                "2",
                "--warmup-epochs",
                "0",
                *ARGS,
            ]
        )
        == 0
    )
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 0
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    last = load_checkpoint(run / "checkpoints/last.pt")
    assert last["epoch"] == 4 and last["config"]["epochs"] == 4 and len(last["history"]) == 4
    # 12 training images at batch 8: 2 steps per epoch; the cosine now decays over 8 steps, not 4
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.025, 0.0, 0.05 * 0.5 * (1 + np.cos(np.pi * 6 / 8)), 0.0])
    with pytest.raises(ValueError, match=f"^{re.escape(str(run))} has trained 4 epochs: epochs=3 would shorten it$"):
        train(replace(resume_config(run), epochs=3))  # the API: refused as the CLI refuses --epochs 3


def test_a_checkpoint_without_a_fingerprint_resumes_with_a_warning(tmp_path, caplog):
    data = bright_and_dark_folder(tmp_path / "data", per_class=12, size=20)
    run = tmp_path / "run"
    _train_cli(tmp_path, str(data), str(run), epochs=1)
    last = run / "checkpoints" / "last.pt"
    old = torch.load(last, weights_only=True)
    del old["data"]  # as an older version saved it
    torch.save(old, last)
    with caplog.at_level(logging.WARNING, logger="resnexus"):
        result = train(replace(resume_config(run), epochs=2, verbose=True))
    assert len(result.history) == 2
    assert (
        f"warning: {run} was saved by an older version that did not record its data: "
        f"cannot check that {data} still holds the images it was trained on"
    ) in caplog.messages
    assert load_checkpoint(last)["data"]["images"] == 24  # recorded from now on


def test_resume_refuses_a_last_pt_that_is_not_a_resumable_checkpoint_naming_it(tmp_path, capsys):
    data = bright_and_dark_folder(tmp_path / "data", per_class=6, size=20)
    run = tmp_path / "run"
    _train_cli(tmp_path, str(data), str(run), epochs=1)
    last = run / "checkpoints" / "last.pt"
    shutil.copyfile(run / "checkpoints" / "best.pt", last)  # weights and metadata, no training state
    assert main(["train", "--resume", str(run)]) == 2
    assert _error_line(capsys) == (
        f"resnexus train: error: {last}: not a resumable last.pt, it lacks model_state, optimizer, scheduler, "
        "scaler, best_score, best_epoch (a best.pt holds weights only); --resume needs the last.pt that training saved"
    )
    torch.save({"model": torch.zeros(2)}, last)  # some other PyTorch file
    with pytest.raises(
        WeightsError, match=re.escape(f"{last}: not a resnexus last.pt (no 'resnexus-checkpoint' marker)")
    ):
        read_resume_state(last)
    with pytest.raises(WeightsError, match=re.escape(f"{last}: not a resnexus last.pt")):  # the Python API too
        train(TrainConfig(data=str(data), out=str(run), model="resnet20_cifar", image_size=16, resume=True, epochs=2))
