"""One walker (data/scan.py walk_tree) for check-data, the check before training, train's scan and
predict's: links to folders are followed, each real folder and file once, and a file reached twice or
under two classes is reported (issue 15, item 1)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from resnexus.cli import main
from resnexus.data import DataError, scan_folder, scan_unlabeled
from resnexus.data.check import check_data
from resnexus.engine import TrainConfig
from resnexus.engine.config import check_before_training, checked_splits

from .images import make_tree, pixels, write_image


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    tiny = dict(model="resnet20_cifar", model_config={"layers": (1, 1, 1)}, epochs=1, batch_size=4, image_size=8)
    return TrainConfig(data=str(data), out=str(out), precision="fp32", verbose=False, **(tiny | kw))


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(pixels(24, 16, seed=7)).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[:300])
    return path


def _rel(paths, root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def _found(report, problem: str) -> list[tuple[str, str, str]]:
    return [(f.severity, str(f.path), f.detail) for f in report.findings if f.problem == problem]


def test_a_link_loop_back_to_the_data_folder_keeps_every_image_in_its_own_class(tmp_path):
    names = [f"{i}.png" for i in range(6)]
    data = make_tree(tmp_path / "data", {"a": names, "b": names})
    os.symlink("..", data / "b" / "loop")
    samples = scan_folder(data)
    assert _rel(samples.paths, data) == [f"{c}/{n}" for c in "ab" for n in names]
    assert samples.labels == [0] * 6 + [1] * 6  # not a's images a second time, as class b
    report = check_data(data)
    assert report.images == 12 and not report.errors
    assert _found(report, "link-loop") == [
        (
            "warning",
            str(data / "b" / "loop"),
            f"a link back to {os.path.realpath(data)}, which holds the data folder {data}: not followed (a loop)",
        )
    ]
    assert _rel(scan_unlabeled(data), data) == _rel(samples.paths, data)
    check_before_training(_config(data, tmp_path / "run"))  # accepted: a warning, not an error


def test_a_linked_folder_is_read_and_checked_like_a_real_one(tmp_path):
    names = [f"{i}.png" for i in range(8)]
    data = make_tree(tmp_path / "data", {"a": names, "b": names[:7]})
    outside = write_image(tmp_path / "elsewhere" / "more" / "x.png", seed=99).parent
    half = _truncated_jpeg(outside / "half.jpg")
    os.symlink(outside, data / "b" / "more")
    linked = data / "b" / "more" / "half.jpg"
    samples = scan_folder(data)
    assert _rel(samples.paths, data)[8:] == [f"b/{n}" for n in names[:7]] + ["b/more/half.jpg", "b/more/x.png"]
    report = check_data(data)
    assert [(f.problem, f.path) for f in report.errors] == [("truncated", linked)]
    assert report.unreadable == [linked] and half.exists()
    with pytest.raises(DataError, match=r"1 image file\(s\) cannot be used") as refused:
        check_before_training(_config(data, tmp_path / "run"))
    assert str(linked) in str(refused.value)
    splits, skipped = checked_splits(_config(data, tmp_path / "run", skip_bad_images=True, val_fraction=0.0))
    assert skipped == [linked]
    used = sorted(p for s in splits.values() for p in _rel(s.paths, data))
    assert used == [f"a/{n}" for n in names] + [f"b/{n}" for n in names[:7]] + ["b/more/x.png"]


def test_skip_bad_images_with_a_link_loop_and_a_truncated_jpeg_in_a_linked_folder(tmp_path, capsys):
    """The issue's case end to end: check-data lists the JPEG, train --skip-bad-images skips it, no traceback."""
    names = [f"{i}.png" for i in range(6)]
    data = make_tree(tmp_path / "data", {"a": names, "b": names})
    os.symlink("..", data / "b" / "loop")
    _truncated_jpeg(tmp_path / "linked" / "half.jpg")
    os.symlink(tmp_path / "linked", data / "a" / "linked")
    assert main(["check-data", str(data)]) == 1
    listing = capsys.readouterr().out
    assert f"truncated      {data / 'a' / 'linked' / 'half.jpg'}: cannot be decoded" in listing
    assert f"link-loop      {data / 'b' / 'loop'}" in listing
    argv = ["--model", "resnet20_cifar", "--image-size", "8", "--epochs", "1", "--batch-size", "4"]
    out = tmp_path / "run"
    status = main(["train", "--data", str(data), "--out", str(out), "--precision", "fp32", "--skip-bad-images", *argv])
    assert status == 0, capsys.readouterr().err
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == [str(data / "a" / "linked" / "half.jpg")]


def test_a_file_or_folder_under_two_classes_is_refused_naming_both_routes(tmp_path):
    data = make_tree(tmp_path / "data", {"a": ["0.png", "1.png", "sub/2.png"], "b": ["0.png", "1.png"]})
    os.symlink(data / "a" / "0.png", data / "b" / "also.png")
    os.symlink(data / "a" / "sub", data / "b" / "sub")
    file_detail = (
        f"the same file as {data / 'a' / '0.png'}, which is in class 'a': it would be labelled both 'a' and 'b'"
    )
    folder_detail = (
        f"a link to {data / 'a' / 'sub'}, a folder of class 'a': its images would be labelled both 'a' and 'b'"
    )
    report = check_data(data)
    assert sorted((str(f.path), f.problem, f.detail) for f in report.errors) == [
        (str(data / "b" / "also.png"), "two-labels", file_detail),
        (str(data / "b" / "sub"), "two-labels", folder_detail),
    ]
    with pytest.raises(DataError) as refused:
        scan_folder(data)
    assert f"{data / 'b' / 'also.png'}: {file_detail}" in str(refused.value)
    assert f"{data / 'b' / 'sub'}: {folder_detail}" in str(refused.value)
    with pytest.raises(DataError, match="the data cannot be trained on") as before_training:
        check_before_training(_config(data, tmp_path / "run", skip_bad_images=True))
    assert file_detail in str(before_training.value) and folder_detail in str(before_training.value)


def test_a_file_reached_twice_in_one_class_is_counted_once_and_reported(tmp_path):
    names = [f"{i}.png" for i in range(8)]
    data = make_tree(tmp_path / "data", {"a": ["0.png", "1.png", "sub/2.png", *names[3:]], "b": names})
    os.symlink("0.png", data / "a" / "copy.png")
    os.symlink("sub", data / "a" / "again")
    in_a = ["a/0.png", "a/1.png", *(f"a/{n}" for n in names[3:]), "a/sub/2.png"]
    assert _rel(scan_folder(data).paths, data)[:8] == in_a
    assert _rel(scan_unlabeled(data / "a"), data) == in_a
    report = check_data(data)
    assert report.images == 16 and not report.errors and not report.duplicates
    assert sorted((f.severity, str(f.path), f.detail) for f in report.findings if f.problem == "reached-twice") == [
        (
            "warning",
            str(data / "a" / "again"),
            f"a link to {data / 'a' / 'sub'}, a folder already read: not followed, its images are counted once",
        ),
        (
            "warning",
            str(data / "a" / "copy.png"),
            f"the same file as {data / 'a' / '0.png'} (through a link): counted once",
        ),
    ]
