"""One bad image no longer aborts predict / evaluate / explain: without --skip-bad-images the error
names the file and the flag; with it the rest are done and the skipped files are listed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import resnexus
from resnexus.cli import main
from resnexus.engine.checkpoint import make_checkpoint, save_atomic
from tests.data.images import make_tree, short_png
from tests.helpers import randomize_


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path, Path]:
    """(checkpoint of a random 2-class resnet20_cifar, class folders a/ b/ with one non-image in b/, the bad file).

    The bad file is one the old decoder refused too: in-process tests must not meet one that crashed it.
    """
    model = randomize_(resnexus.create_model("resnet20_cifar", num_classes=2)).eval()
    ckpt = make_checkpoint(
        model,
        model_name="resnet20_cifar",
        model_config={},
        class_names=["a", "b"],
        image_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crop_fraction=1.0,
    )
    save_atomic(ckpt, tmp_path / "model.pt")
    images = make_tree(tmp_path / "images", {"a": ["1.png", "2.jpg"], "b": ["1.png", "3.png"]})
    bad = images / "b" / "2.png"
    bad.write_bytes(b"not an image\n")
    return tmp_path / "model.pt", images, bad


def _argv(command: str, checkpoint: Path, images: Path, out: Path) -> list[str]:
    if command == "predict":
        return ["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out / "p.csv")]
    if command == "evaluate":
        return ["evaluate", "--checkpoint", str(checkpoint), "--data", str(images), "--out", str(out / "m.json")]
    return ["explain", "--checkpoint", str(checkpoint), "--input", str(images), "--out", str(out / "cam")]


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
def test_a_bad_image_stops_the_command_naming_it_and_the_flag(command, setup, tmp_path, capsys):
    checkpoint, images, bad = setup
    assert main(_argv(command, checkpoint, images, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resnexus {command}: error: cannot decode image {bad}: not an image file (first bytes: b'not an image'); "
        f"pass --skip-bad-images to {command} the other images"
    )
    assert not (tmp_path / "out" / "p.csv").exists() and not (tmp_path / "out" / "m.json").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
def test_skip_bad_images_does_the_rest_and_lists_the_skipped(command, setup, tmp_path, capsys):
    checkpoint, images, bad = setup
    out = tmp_path / "out"
    assert main([*_argv(command, checkpoint, images, out), "--skip-bad-images"]) == 0
    stdout = capsys.readouterr().out
    assert f"  {bad}: not an image file (first bytes: b'not an image')" in stdout.splitlines()
    good = [images / "a" / "1.png", images / "a" / "2.jpg", images / "b" / "1.png", images / "b" / "3.png"]
    if command == "predict":
        assert "skipped 1 unreadable image(s), no rows for them in" in stdout
        rows = list(csv.DictReader((out / "p.csv").open()))
        assert [row["path"] for row in rows] == [str(p) for p in good]
        # the others' probabilities are what they are without the bad file
        bad.unlink()
        assert main(_argv(command, checkpoint, images, tmp_path / "clean")) == 0
        assert rows == list(csv.DictReader((tmp_path / "clean" / "p.csv").open()))
    elif command == "evaluate":
        metrics = json.loads((out / "m.json").read_text())
        assert metrics["n"] == 4 and metrics["skipped"] == [str(bad)]
        assert "4 images (1 unreadable skipped): " in stdout
    else:
        rows = list(csv.DictReader((out / "cam" / "explain.csv").open()))
        assert [row["path"] for row in rows] == [str(p) for p in good]
        assert sorted(p.name for p in (out / "cam").glob("*.png")) == [
            "1_2_gradcam.png",
            "1_gradcam.png",
            "2_gradcam.png",
            "3_gradcam.png",
        ]


def test_predict_when_no_image_can_be_decoded(setup, tmp_path, capsys):
    checkpoint, _images, bad = setup
    argv = [*_argv("predict", checkpoint, bad, tmp_path), "--skip-bad-images"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(f"none of the 1 image(s) in {bad} can be decoded (all skipped)")


def test_the_predict_process_survives_a_short_png(setup, tmp_path):
    """The reported crash, end to end: `resnexus predict` exited 139 (segfault) with no message."""
    checkpoint, _, bad = setup
    bad.write_bytes(short_png(48, 48))
    argv = _argv("predict", checkpoint, bad, tmp_path)
    done = subprocess.run([sys.executable, "-m", "resnexus", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr}"
    assert done.stderr.strip().endswith("pass --skip-bad-images to predict the other images")
    assert f"cannot decode image {bad}" in done.stderr
