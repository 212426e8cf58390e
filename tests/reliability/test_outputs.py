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


# -- output folders (files.check_output_folder): never the data or inside it, never others' files --------
TINY_TRAIN = ["--model", "resnet20_cifar", "--image-size", "8", "--epochs", "1", "--batch-size", "4"]
FOLDER_COMMANDS = {
    "train": ["train", *TINY_TRAIN],
    "train --folds": ["train", "--folds", "2", *TINY_TRAIN],
    "compare": ["compare", "--models", "resnet20_cifar", *TINY_TRAIN[2:]],
}


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_run_is_never_written_into_its_data(command, overwrite, images, capsys):
    """Its plots would be images of a class "benign" next time; --out data would add a class "plots"."""
    argv = [*FOLDER_COMMANDS[command], "--data", str(images), *overwrite, "--out"]
    before = _tree(images)
    for out, says in ((images / "benign", "is inside the data folder"), (images, "is the data folder")):
        assert main([*argv, str(out)]) == 2
        _one_line_error(capsys, argv[0], f"--out {out} {says} {images}: what is written there would be read as input")
        assert _tree(images) == before and not out.joinpath("checkpoints").exists()
    assert not (images / "benign").exists()


@pytest.mark.parametrize("command", [*FOLDER_COMMANDS, "explain"])
def test_a_folder_of_other_files_is_refused_without_overwrite(command, checkpoint, images, tmp_path, capsys):
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("four years")
    if command == "explain":
        argv = ["explain", "--checkpoint", str(checkpoint), "--input", str(images)]
        kind = "explain output"
    else:
        argv = [*FOLDER_COMMANDS[command], "--data", str(images)]
        kind = {"train": "a resnexus run", "train --folds": "a cross-validation run", "compare": "a comparison"}[
            command
        ]
    assert main([*argv, "--out", str(mydocs)]) == 2
    _one_line_error(
        capsys,
        argv[0],
        f"--out {mydocs} already holds files that are not {kind} (thesis.txt); choose a new or empty folder, "
        "or pass --overwrite to write into it anyway",
    )
    assert _tree(mydocs) == {"thesis.txt": b"four years"}


def test_overwrite_writes_a_run_into_a_folder_of_other_files_which_may_hold_the_data(tmp_path, capsys):
    """--overwrite means for any folder what it means for a run's: written into, nothing removed; and the
    data inside the output folder (the reverse of an output inside the data) is fine."""
    from tests.helpers import noise_folder

    mydocs = tmp_path / "mydocs"
    data = noise_folder(mydocs / "data")
    (mydocs / "thesis.txt").write_text("four years")
    argv = ["train", "--data", str(data), "--out", str(mydocs), *TINY_TRAIN, "--precision", "fp32"]
    assert main(argv) == 2
    _one_line_error(capsys, "train", "not a resnexus run (data, thesis.txt)")
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert (mydocs / "checkpoints" / "best.pt").is_file() and (mydocs / "thesis.txt").read_text() == "four years"
    assert main(argv) == 2  # now it holds a run: refused as one (continue it with --resume)
    assert "already holds a run" in capsys.readouterr().err


def test_explain_and_a_savedmodel_are_never_written_over_the_checkpoint_run(checkpoint, images, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(checkpoint.read_bytes())
    before = _tree(run)
    assert main(["explain", "--checkpoint", str(run), "--input", str(images), "--out", str(run), "--overwrite"]) == 2
    _one_line_error(capsys, "explain", f"--out {run} is the checkpoint, an input of this command")
    export = ["export", "--checkpoint", str(run), "--format", "savedmodel", "--overwrite", "--output"]
    assert main([*export, str(run)]) == 2
    _one_line_error(capsys, "export", f"--output {run} is the checkpoint, an input of this command")
    mydocs = tmp_path / "mydocs"
    mydocs.mkdir()
    (mydocs / "thesis.txt").write_text("four years")
    assert main([*export, str(mydocs)]) == 2  # a SavedModel replaces the folder whole: not even with --overwrite
    _one_line_error(
        capsys, "export", "not a SavedModel (thesis.txt); choose a new or empty folder, it would be replaced whole"
    )
    assert _tree(run) == before and _tree(mydocs) == {"thesis.txt": b"four years"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "imagenet"], "--checkpoint holds its model and weights: --weights would be ignored"),
        (["--model", "resnet18"], "--checkpoint holds its model and weights: --model would be ignored"),
        (["--model", "resnet18", "--weights", "imagenet", "--weights-dir", "w"], "--model, --weights, --weights-dir"),
    ],
)
def test_predict_refuses_options_its_checkpoint_would_ignore(extra, message, checkpoint, images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out), *extra]) == 2
    _one_line_error(capsys, "predict", message)
    assert not out.exists()


def test_ignored_options_of_predict_evaluate_and_export_are_refused(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    published = ["--model", "resnet18", "--weights", "imagenet", "--ensemble"]
    assert main(["predict", *published, "--input", str(images), "--output", str(out)]) == 2
    _one_line_error(
        capsys, "predict", "--ensemble averages the fold models of a --checkpoint `train --folds` directory"
    )
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(images), "--overwrite"]) == 2
    _one_line_error(capsys, "evaluate", "--overwrite replaces an existing --out file: it goes with --out")
    keras = ["export", "--checkpoint", str(checkpoint), "--format", "keras", "--output", str(tmp_path / "m.keras")]
    assert main([*keras, "--opset", "17"]) == 2
    _one_line_error(capsys, "export", "--opset is an ONNX option; --format keras does not use it")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["images", "model.pt"])
