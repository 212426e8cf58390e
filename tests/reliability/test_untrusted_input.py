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
    assert "weights_only" not in err and err.count("\n") == 1
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
        (["--jobs", "2"], "--jobs goes with --folds (it trains fold runs side by side)"),
        (["--folds", "2", "--jobs", "0"], "--jobs must be a whole number >= 1, got 0"),
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


def _text_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("hello, this is not a checkpoint\n")
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "train-weights", "resume"])
def test_a_text_file_given_as_a_checkpoint_is_called_what_it_is(command, data, tmp_path, capsys):
    text = _text_file(tmp_path, "x.pt")
    if command == "resume":
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        text = text.rename(tmp_path / "run" / "checkpoints" / "last.pt")
    argv = {
        "evaluate": ["evaluate", "--checkpoint", str(text), "--data", str(data)],
        "predict": ["predict", "--checkpoint", str(text), "--input", str(data), "--output", str(tmp_path / "p.csv")],
        "explain": ["explain", "--checkpoint", str(text), "--input", str(data), "--out", str(tmp_path / "cam")],
        "train-weights": ["train", "--data", str(data), "--weights", str(text), "--out", str(tmp_path / "r2")],
        "resume": ["train", "--resume", str(tmp_path / "run")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{text} is not a PyTorch checkpoint (it starts with b'hello, this is n" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "weights_only" not in err and "malicious" not in err and "refusing" not in err


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_saved_exploit_is_refused_without_advice_to_turn_the_safety_off(legacy, tmp_path):
    from resnexus.engine.checkpoint import load_checkpoint
    from resnexus.models.weights import WeightsError, read_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Exploit(marker)}, path, _use_new_zipfile_serialization=not legacy)
    for read in (load_checkpoint, read_state_dict):
        with pytest.raises(WeightsError) as caught:
            read(path)
        message = str(caught.value)
        assert message.startswith(f"refusing to load {path}: it holds Python objects")
        assert "weights_only" not in message and "add_safe_globals" not in message
        assert "\n" not in message and "\x1b" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "it is empty"),
        (b"\x89HDF\r\n\x1a\n" + bytes(8), "it is an HDF5 file: Keras weights need the .h5 suffix"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "it looks like a safetensors file: give it the .safetensors suffix"),
        (b"\xff\xd8\xff\xe0 JFIF", "it starts with b'\\xff\\xd8\\xff\\xe0 JFIF'"),
    ],
)
def test_a_foreign_weights_file_is_named_by_its_content(content, says, tmp_path):
    from resnexus.models.weights import WeightsError, read_state_dict

    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint") as caught:
        read_state_dict(path)
    assert str(caught.value) == f"{path} is not a PyTorch checkpoint ({says})"
