"""Untrusted files and bad options: nothing a file smuggles in runs, and every mistake is one clear line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.cli import main
from resnexus.models import create_model
from resnexus.models.weights import load_weights, save_weights
from tests.helpers import randomize_


class _Exploit:
    """Unpickling this would create ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png"
            )
    return tmp_path / "data"


def _evil_file(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    with path.open("wb") as f:
        pickle.dump({"format": "resnexus-checkpoint", "state_dict": _Exploit(marker)}, f)
    return path, marker


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "train-weights"])
def test_a_pickle_that_runs_code_is_refused_everywhere_a_file_is_read(command, data, tmp_path, capsys):
    evil, marker = _evil_file(tmp_path, "evil.pt")
    argv = {
        "evaluate": ["evaluate", "--checkpoint", str(evil), "--data", str(data)],
        "predict": ["predict", "--checkpoint", str(evil), "--input", str(data), "--output", str(tmp_path / "p.csv")],
        "explain": ["explain", "--checkpoint", str(evil), "--input", str(data), "--out", str(tmp_path / "cam")],
        "train-weights": [
            "train",
            "--data",
            str(data),
            "--model",
            "resnet20_cifar",
            "--weights",
            str(evil),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and str(evil) in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_models_round_trip_through_safetensors(tmp_path):
    model = randomize_(create_model("resnext50_32x4d", num_classes=2))
    path = save_weights(model, tmp_path / "model.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # a JSON header then raw tensors: nothing to execute
    copy = create_model("resnext50_32x4d", num_classes=2)
    load_weights(copy, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))


def test_csv_paths_cannot_leave_the_data_root(data, tmp_path, capsys):
    outside = tmp_path / "secret.png"
    outside.write_bytes((data / "a" / "0.png").read_bytes())
    listing = data / "labels.csv"
    listing.write_text("path,label\na/0.png,a\nb/0.png,b\n../secret.png,a\n")
    assert main(["train", "--data", str(listing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "row 4" in err and "'../secret.png' is outside" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnext50_32x4"], "unknown model 'resnext50_32x4'; did you mean resnext50_32x4d"),
        (["--image-size", "4"], "the image size >= 8 pixels"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--folds", "1"], "cross-validation needs at least 2 folds, got 1"),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "val_fraction + test_fraction must be < 1"),
        (
            ["--optimizer", "adamw", "--precision", "fp32", "--balance", "sampler", "--group-by", "(["],
            "invalid group pattern",
        ),
    ],
)
def test_bad_options_are_one_clear_line(argv, message, data, tmp_path, capsys):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnexus train: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_for_other_classes_or_another_architecture(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--model",
                "resnet20_cifar",
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--precision",
                "fp32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    other = tmp_path / "other"
    for cls in ("a", "zebra"):
        (other / cls).mkdir(parents=True)
        (other / cls / "x.png").write_bytes((data / "a" / "0.png").read_bytes())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints/best.pt"), "--data", str(other)]) == 2
    assert "['zebra']" in capsys.readouterr().err
    save_weights(create_model("resnet18", num_classes=2), tmp_path / "r18.safetensors")
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--model",
                "resnet20_cifar",
                "--weights",
                str(tmp_path / "r18.safetensors"),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    first, *details = err.splitlines()  # one line that says it all, then the keys that differ
    assert first.startswith(f"resnexus train: error: {tmp_path / 'r18.safetensors'} does not fit model")
    assert any("missing keys" in line for line in details) and "Traceback" not in err
