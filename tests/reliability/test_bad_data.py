"""Messy image folders: every problem found by path and reason, and training refuses or skips them."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnexus.cli import main
from resnexus.data import DataError, load_image, resolve_splits
from resnexus.data.check import check_data
from resnexus.engine import TrainConfig, train

RNG = np.random.default_rng(0)


def _jpeg(path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 16), **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, **kw)
    return path


def _bytes_of(mode: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height 1-bit pixels, with almost no data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture()
def messy(tmp_path) -> Path:
    """Two classes with one of every problem check-data knows, and enough good images to train."""
    root = tmp_path / "messy"
    for cls in ("cats", "dogs"):
        for i in range(6):
            _jpeg(root / cls / f"ok{i}.png")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    (root / "cats" / "half.jpg").write_bytes(_bytes_of("RGB", "JPEG")[:300])
    (root / "dogs" / "half.png").write_bytes(_bytes_of("RGB", "PNG")[:200])
    (root / "dogs" / "page.jpg").write_text("<html><body>404 not found</body></html>")
    (root / "dogs" / "bomb.png").write_bytes(_png_bomb(60_000, 60_000))
    for mode, name in (("L", "grey.png"), ("P", "palette.png"), ("RGBA", "alpha.png"), ("CMYK", "cmyk.jpg")):
        _jpeg(root / "cats" / name, mode)
    Image.fromarray((RNG.integers(0, 65535, (16, 24))).astype(np.uint16)).save(root / "cats" / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    _jpeg(root / "dogs" / "rotated.jpg", exif=exif.tobytes())
    (root / "cats" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "dogs" / "notes.txt").write_text("taken on a Tuesday")
    (root / "README.md").write_text("my photos")
    return root


def test_check_data_reports_every_problem_by_path_and_reason(messy):
    report = check_data(messy)
    found = {(f.path.relative_to(messy).as_posix(), f.severity, f.problem) for f in report.findings}
    assert {
        ("cats/empty.jpg", "error", "zero-byte"),
        ("cats/half.jpg", "error", "truncated"),
        ("dogs/half.png", "error", "truncated"),
        ("dogs/page.jpg", "error", "not-an-image"),
        ("dogs/bomb.png", "error", "too-large"),
        ("cats/grey.png", "note", "converted"),
        ("cats/palette.png", "note", "converted"),
        ("cats/alpha.png", "note", "converted"),
        ("cats/cmyk.jpg", "note", "converted"),
        ("cats/deep.png", "note", "converted"),
        ("dogs/rotated.jpg", "note", "exif-rotated"),
        ("cats/.DS_Store", "note", "skipped"),
        ("dogs/notes.txt", "note", "skipped"),
        ("README.md", "note", "skipped"),
    } <= found
    assert sorted(p.name for p in report.unreadable) == ["bomb.png", "empty.jpg", "half.jpg", "half.png", "page.jpg"]
    assert report.structural_errors == []
    bomb = next(f for f in report.findings if f.path.name == "bomb.png")
    assert bomb.detail.startswith("3600 MP, over the 100 MP limit") and "decompression bomb" in bomb.detail
    (small_limit,) = [f for f in check_data(messy, max_pixels=300).findings if f.path == messy / "cats" / "ok0.png"]
    assert small_limit.detail.startswith("24 x 16 = 0 MP, over the 0 MP limit")
    assert "<html>" in next(f.detail for f in report.findings if f.path.name == "page.jpg")
    assert report.images == 12 + 5 + 5 + 1  # ok, broken, converted, rotated: the skipped files are not images


def test_converted_images_load_correctly(messy):
    grey = load_image(messy / "cats" / "grey.png")
    assert grey.shape[0] == 3 and bool((grey[0] == grey[1]).all() and (grey[1] == grey[2]).all())
    pil_cmyk = np.asarray(Image.open(messy / "cats" / "cmyk.jpg").convert("RGB")).astype(int)
    ours = load_image(messy / "cats" / "cmyk.jpg").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - pil_cmyk).mean() < 3  # the two JPEG decoders may round differently
    deep = np.asarray(Image.open(messy / "cats" / "deep.png")).astype(np.float64)
    assert np.abs(load_image(messy / "cats" / "deep.png")[0].numpy() - deep * 255 / 65535).max() <= 1
    assert tuple(load_image(messy / "dogs" / "rotated.jpg").shape) == (3, 24, 16)  # stored 24 wide, shown upright


def test_structure_problems(tmp_path):
    one = tmp_path / "one"
    _jpeg(one / "only" / "a.png")
    assert [f.problem for f in check_data(one).errors] == ["single-class"]
    empty = tmp_path / "empty"
    _jpeg(empty / "a" / "x.png")
    (empty / "b").mkdir()
    (err,) = check_data(empty).errors
    assert (err.path, err.problem) == (empty / "b", "empty-class")


def test_leaks_and_mismatched_classes_between_train_and_test(tmp_path):
    root = tmp_path / "split"
    for part, classes in (("train", ("a", "b")), ("test", ("a", "c"))):
        for cls in classes:
            _jpeg(root / part / cls / f"{part}.png")
    (root / "test" / "a" / "copy.png").write_bytes((root / "train" / "a" / "train.png").read_bytes())
    report = check_data(root)
    leak = next(f for f in report.findings if f.problem == "duplicate")
    assert leak.path == root / "test" / "a" / "copy.png" and "in train and test leaks" in leak.detail
    problems = {(f.severity, f.detail) for f in report.findings if f.problem == "class-mismatch"}
    assert ("error", "class folder 'c' is not among train's classes ['a', 'b']") in problems
    assert ("warning", "no 'b' folder: that class is not tested") in problems


def test_duplicates_in_one_folder_stay_on_one_side_of_the_split(tmp_path):
    root = tmp_path / "dups"
    for cls in ("a", "b"):
        for i in range(10):
            _jpeg(root / cls / f"{i}.png")
    for i in range(3):  # three copies of one photo, under different names
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "0.png").read_bytes())
    report = check_data(root)
    assert [sorted(p.name for p in group) for group in report.duplicates] == [
        ["0.png", "copy0.png", "copy1.png", "copy2.png"]
    ]
    for seed in range(5):
        splits = resolve_splits(root, val_fraction=0.2, test_fraction=0.3, seed=seed, same_group=report.duplicates)
        copies = {root / "a" / n for n in ("0.png", "copy0.png", "copy1.png", "copy2.png")}
        sides = {part for part, s in splits.items() for p in s.paths if p in copies}
        assert len(sides) == 1, f"seed {seed}: copies split over {sides}"


def _train_config(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        epochs=1,
        batch_size=4,
        image_size=16,
        precision="fp32",
        verbose=False,
        **kw,
    )


def test_train_refuses_unreadable_images_before_creating_anything(messy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError) as error:
        train(_train_config(messy, out))
    message = str(error.value)
    assert message.startswith("5 image file(s) cannot be used") and "--skip-bad-images" in message
    for name in ("empty.jpg", "half.jpg", "half.png", "page.jpg", "bomb.png"):
        assert name in message
    assert not out.exists()


def test_skip_bad_images_trains_on_the_rest_and_reports_them(messy, tmp_path):
    result = train(_train_config(messy, tmp_path / "run", skip_bad_images=True, val_fraction=0.0, test_fraction=0.3))
    skipped = sorted(Path(p).name for p in result.metrics["skipped_images"])
    assert skipped == ["bomb.png", "empty.jpg", "half.jpg", "half.png", "page.jpg"]
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_images"]
        == result.metrics["skipped_images"]
    )
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Skipped images" in report and "half.png" in report
    splits = resolve_splits(messy, val_fraction=0.0, test_fraction=0.3, exclude=check_data(messy).unreadable)
    assert sum(len(s) for s in splits.values()) == 18 and result.metrics["n"] == len(splits["test"])


def test_cli_check_data_exit_status_and_listing(messy, tmp_path, capsys):
    assert main(["check-data", str(messy), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "23 images" in out and "5 errors" in out
    assert f"{messy / 'cats' / 'half.jpg'}: cannot be decoded" in out and "converted" not in out
    clean = tmp_path / "clean"
    for cls in ("a", "b"):
        for i in range(10):  # enough for train's split: check-data also reports what train would refuse
            _jpeg(clean / cls / f"x{i}.png")
    assert main(["check-data", str(clean)]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    assert main(["train", "--data", str(messy), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnexus train: error: 5 image file(s) cannot be used") and "Traceback" not in err
