"""What inference commands write: unique ids, no input or existing file overwritten, bad paths refused first."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

import resnexus
from resnexus.cli import main
from resnexus.engine.checkpoint import make_checkpoint, save_atomic
from tests.data.images import make_tree
from tests.helpers import randomize_


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    model = randomize_(resnexus.create_model("resnet20_cifar", num_classes=2)).eval()
    ckpt = make_checkpoint(
        model,
        model_name="resnet20_cifar",
        model_config={},
        class_names=["cats", "dogs"],
        image_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crop_fraction=1.0,
    )
    return save_atomic(ckpt, tmp_path / "model.pt")


@pytest.fixture()
def images(tmp_path) -> Path:
    return make_tree(tmp_path / "images", {"cats": ["img_0.png", "img_1.png"], "dogs": ["img_0.png", "img_2.png"]})


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> bytes): to show that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(capsys, command: str, *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"resnexus {command}: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def test_id_label_ids_are_unique_when_file_stems_collide(checkpoint, images, tmp_path):
    out = tmp_path / "sub.csv"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out), "--id-label"])
        == 0
    )
    with out.open(newline="", encoding="utf-8") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert ids == ["cats/img_0", "cats/img_1", "dogs/img_0", "dogs/img_2"]


def test_id_label_ids_stay_file_stems_when_they_are_unique(checkpoint, tmp_path):
    make_tree(tmp_path / "test", {"x": ["1.png", "2.png", "10.png"]})
    out = tmp_path / "sub.csv"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(tmp_path / "test"),
                "--output",
                str(out),
                "--id-label",
            ]
        )
        == 0
    )
    with out.open(newline="", encoding="utf-8") as f:
        assert [row["id"] for row in csv.DictReader(f)] == ["1", "2", "10"]


def test_id_label_same_stem_other_suffix_in_one_folder(checkpoint, tmp_path):
    make_tree(tmp_path / "test", {"x": ["a.png", "a.jpg"]})
    out = tmp_path / "sub.csv"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(tmp_path / "test"),
                "--output",
                str(out),
                "--id-label",
            ]
        )
        == 0
    )
    with out.open(newline="", encoding="utf-8") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert sorted(ids) == ["x/a.jpg", "x/a.png"]


def test_predict_never_overwrites_one_of_its_input_images(checkpoint, images, capsys):
    before = _tree(images)
    target = images / "dogs" / "img_0.png"
    for extra in ([], ["--overwrite"]):
        argv = ["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(target), *extra]
        assert main(argv) == 2
        _one_line_error(capsys, "predict", str(target), "input")
    assert _tree(images) == before


def test_predict_never_overwrites_the_checkpoint_it_reads(checkpoint, images, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(checkpoint.read_bytes())
    for source, target in ((checkpoint, checkpoint), (run, best)):
        before = target.read_bytes()
        argv = ["predict", "--checkpoint", str(source), "--input", str(images), "--output", str(target)]
        assert main([*argv, "--overwrite"]) == 2
        _one_line_error(capsys, "predict", str(target), "input")
        assert target.read_bytes() == before


def test_predict_refuses_an_existing_output_unless_overwrite(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("keep me\n")
    argv = ["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, "predict", str(out), "--overwrite")
    assert out.read_text() == "keep me\n"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_text().startswith("path,label,prob_cats,prob_dogs")


@pytest.mark.parametrize("case", ["existing-dir", "parent-is-a-file", "read-only-parent"])
def test_predict_output_that_cannot_be_written_is_one_line_and_leaves_nothing(
    case, checkpoint, images, tmp_path, capsys
):
    place = tmp_path / "place"
    place.mkdir()
    if case == "existing-dir":
        out = place / "dir"
        out.mkdir()
    elif case == "parent-is-a-file":
        (place / "file").write_text("x")
        out = place / "file" / "p.csv"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        out = place / "locked" / "p.csv"
        out.parent.mkdir()
        out.parent.chmod(0o555)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    try:
        argv = ["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out)]
        assert main([*argv, "--overwrite"]) == 2
        _one_line_error(capsys, "predict", str(out))
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    finally:
        if case == "read-only-parent":
            out.parent.chmod(0o755)


def test_evaluate_out_checks(checkpoint, images, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(images), "--out"]
    folder = tmp_path / "metrics"
    folder.mkdir()
    assert main([*base, str(folder)]) == 2
    _one_line_error(capsys, "evaluate", str(folder))
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.tmp"))
    existing = tmp_path / "m.json"
    existing.write_text("{}")
    assert main([*base, str(existing)]) == 2
    _one_line_error(capsys, "evaluate", str(existing), "--overwrite")
    assert existing.read_text() == "{}"
    assert main([*base, str(existing), "--overwrite"]) == 0
    assert '"accuracy"' in existing.read_text()


def test_explain_out_checks(checkpoint, images, tmp_path, capsys):
    base = ["explain", "--checkpoint", str(checkpoint), "--input", str(images), "--out"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([*base, str(a_file)]) == 2
    _one_line_error(capsys, "explain", str(a_file))
    cam = tmp_path / "cam"
    assert main([*base, str(cam)]) == 0
    first = _tree(cam)
    assert "explain.csv" in first
    assert main([*base, str(cam)]) == 2  # a second run would replace the first one's files
    _one_line_error(capsys, "explain", str(cam), "--overwrite")
    assert _tree(cam) == first
    assert main([*base, str(cam), "--overwrite"]) == 0
    before = _tree(images)
    assert main([*base, str(images / "cats"), "--overwrite"]) == 2  # overlays among the input images
    _one_line_error(capsys, "explain", str(images / "cats"))
    assert _tree(images) == before
