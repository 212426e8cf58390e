"""Random small folder trees (links, loops, duplicates, bad files, odd names, tiny classes): check-data,
train's scan and predict's scan agree on the images and their labels, and what check-data passes, the
check before training and train's split accept, with the same message when they refuse (issue 15)."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnexus.data import DataError, scan_dataset, scan_unlabeled
from resnexus.data.check import FILE_PROBLEMS, check_data
from resnexus.data.scan import _is_image, is_hidden
from resnexus.engine import TrainConfig
from resnexus.engine.config import check_before_training, checked_splits

CLASS_NAMES = ["cat", "dog", "with space", "Ünïcode", "日本", "Zebra", "b10", "b9"]
SUBFOLDERS = ["", "", "", "", "", "", "sub", "sub", "deep er/ünï", ".hidden"]
CASES = 40


class _Tree:
    """A generated data folder; ``outside`` holds what its links point to."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.data, self.outside, self.rng, self.seed = root / "data", root / "outside", rng, 0
        self.classes = rng.sample(CLASS_NAMES, rng.randint(2, 4))

    def image(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.seed += 1
        pixels = np.random.default_rng(self.seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        return path

    def truncated(self, path: Path) -> Path:
        buffer = io.BytesIO()
        Image.fromarray(np.full((16, 16, 3), self.seed % 256, dtype=np.uint8)).save(buffer, "JPEG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        return path

    def some_class(self) -> Path:
        return self.data / self.rng.choice(self.classes)

    def some_image(self) -> Path | None:
        found = sorted(p for p in self.data.rglob("*") if p.is_file() and not p.is_symlink() and _is_image(p))
        return self.rng.choice(found) if found else None

    def link(self, target: Path | str, at: Path) -> None:
        at.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(at):
            os.symlink(target, at)

    # the unusual but legitimate things a user's folder holds
    def duplicate(self) -> None:
        if (src := self.some_image()) is not None:
            dest = self.some_class() / f"copy of {src.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())

    def truncated_jpeg(self) -> None:
        self.truncated(self.some_class() / "half.jpg")

    def linked_folder(self) -> None:
        shared = self.outside / f"shared{self.seed}"
        for i in range(self.rng.randint(1, 3)):
            self.image(shared / f"s{i}.png")
        if self.rng.random() < 0.5:
            self.truncated(shared / "broken.jpg")
        for _ in range(self.rng.choice([1, 1, 1, 2])):  # two links: the same folder under two classes (or twice)
            self.link(shared, self.some_class() / f"linked {self.rng.randint(0, 9)}")

    def loop(self) -> None:
        self.link(self.rng.choice(["..", ".", "../.."]), self.some_class() / "loop")

    def file_link(self) -> None:
        if (src := self.some_image()) is not None:
            self.link(src, self.some_class() / f"link-{src.stem}.png")

    def folder_link_into_a_class(self) -> None:
        at = self.some_class()
        self.link(at if self.rng.random() < 0.5 else self.some_class(), at / "sub" / "link to a class")

    def linked_class(self) -> None:
        for i in range(self.rng.randint(0, 3)):
            self.image(self.outside / "lc" / f"{i}.png")
        self.link(self.outside / "lc", self.data / "linked class")

    def clutter(self) -> None:
        self.image(self.data / "stray.png")  # beside the class folders: predict reads it, train does not
        self.image(self.data / ".trash" / "x.png")
        (self.some_class() / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (self.some_class() / "notes.txt").write_text("not an image")


EXTRAS: list[Callable[[_Tree], None]] = [
    _Tree.duplicate,
    _Tree.truncated_jpeg,
    _Tree.linked_folder,
    _Tree.loop,
    _Tree.file_link,
    _Tree.folder_link_into_a_class,
    _Tree.linked_class,
    _Tree.clutter,
]


def make_tree(root: Path, seed: int) -> tuple[Path, str | None]:
    """A random data folder and the --group-by to use with it."""
    rng = random.Random(seed)
    tree = _Tree(root, rng)
    for name in tree.classes:
        (tree.data / name).mkdir(parents=True)
        for j in range(rng.choice([0, 1, 2] + [10, 12, 14, 16, 18] * 4)):
            ext = rng.choice([".png", ".jpg", ".JPEG"])
            tree.image(tree.data / name / rng.choice(SUBFOLDERS) / f"p{rng.randint(0, 5)}_{j}{ext}")
    for extra in rng.sample(EXTRAS, rng.choice([0, 1, 1, 2, 2, 3])):
        extra(tree)
    return tree.data, rng.choice([None, None, "patient"])


def _real(paths) -> set[str]:
    return {os.path.realpath(p) for p in paths}


@pytest.mark.parametrize("seed", range(CASES))
def test_check_data_train_and_predict_see_the_same_images(seed, tmp_path):
    data, group_by = make_tree(tmp_path, seed)
    report = check_data(data, group_by=group_by)
    checked = {(p, label) for p, _, label in report.files}
    walk_errors = [f for f in report.errors if f.problem in ("two-labels", "empty-class", "no-classes")]

    # train's scan: the same (file, class) pairs, or a refusal that check-data reported as an error
    try:
        samples = scan_dataset(data, group_by=group_by)
    except DataError:
        assert walk_errors, f"train's scan refused what check-data passed:\n{report.format()}"
    else:
        assert not walk_errors
        assert {(p, samples.class_names[y]) for p, y in zip(samples.paths, samples.labels)} == checked

    # predict's scan: every real file once; the class folders' images plus the images beside them
    beside = {p for p in data.iterdir() if p.is_file() and _is_image(p) and not is_hidden(p.name)}
    try:
        unlabeled = scan_unlabeled(data)
    except DataError:
        unlabeled = []
    assert len(unlabeled) == len(_real(unlabeled))
    assert _real(unlabeled) == _real([p for p, _ in checked] + sorted(beside))

    # what check-data passes, train accepts; what it refuses, train refuses with the same message
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), group_by=group_by, verbose=False)
    if not report.errors:
        check_before_training(config)
    try:
        splits, skipped = checked_splits(TrainConfig(**{**config.__dict__, "skip_bad_images": True}))
    except DataError as refused:
        assert report.structural_errors, f"train refused what check-data passed: {refused}\n{report.format()}"
        split_errors = [f.detail for f in report.structural_errors if f.problem == "split"]
        assert not split_errors or split_errors[0].endswith(f"refuses: {refused}")
    else:
        assert not report.structural_errors, f"check-data refused what train accepted:\n{report.format()}"
        assert all(f.problem in FILE_PROBLEMS for f in report.errors)
        assert sorted(skipped) == sorted(report.unreadable)
        used = {p for part in splits.values() for p in part.paths}
        assert used == {p for p, _ in checked} - set(report.unreadable)
