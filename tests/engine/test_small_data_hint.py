"""The one-line hint of a plain `train` on a small folder: what it held back, and `--folds 5` instead."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from resnexus.data import Samples
from resnexus.engine import TrainConfig, load_checkpoint, run_output, train
from resnexus.engine.config import SMALL_DATA_HINT_IMAGES
from resnexus.engine.run_output import small_data_hint
from tests.helpers import bright_and_dark_folder, tiny_config

PER_CLASS = 15  # 30 images: far below the threshold


def _train(data: Path, out: Path, caplog: pytest.LogCaptureFixture, **kw) -> list[str]:
    """Train one tiny epoch and return the hint lines logged (on the "resnexus" logger)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnexus"):
        train(tiny_config(data, out, **({"verbose": True} | kw)))
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("hint:")]


def test_small_folder_gets_one_line_naming_what_was_held_back(tmp_path, caplog):
    data = bright_and_dark_folder(tmp_path / "photos", PER_CLASS, size=20)
    hints = _train(data, tmp_path / "run", caplog, group_by=r"^(\d)")
    sizes = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["split_sizes"]
    held = sizes["val"] + sizes["test"]
    assert held > 0 and sum(sizes.values()) == 2 * PER_CLASS
    assert hints == [
        f"hint: {held} of these {2 * PER_CLASS} images are held back ({sizes['val']} for validation and "
        f"{sizes['test']} for test) and never trained on; on a data set this small "
        f"`resnexus train --data {data} --folds 5 --group-by '^(\\d)'` measures the recipe by "
        f"cross-validation and then trains the model on all {2 * PER_CLASS}"
    ]


def test_no_hint_when_nothing_is_held_back(tmp_path, caplog):
    data = bright_and_dark_folder(tmp_path / "photos", PER_CLASS, size=20)
    assert _train(data, tmp_path / "run", caplog, val_fraction=0.0, test_fraction=0.0) == []
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["trained_on"] == "all"


def test_no_hint_when_the_folder_has_its_own_test_part(tmp_path, caplog):
    bright_and_dark_folder(tmp_path / "photos" / "train", PER_CLASS, size=20)
    bright_and_dark_folder(tmp_path / "photos" / "test", 4, size=20, seed=1)
    assert _train(tmp_path / "photos", tmp_path / "run", caplog) == []


def test_no_hint_for_a_large_folder(tmp_path, caplog, monkeypatch):
    data = bright_and_dark_folder(tmp_path / "photos", PER_CLASS, size=20)
    monkeypatch.setattr(run_output, "SMALL_DATA_HINT_IMAGES", 2 * PER_CLASS)  # 30 images now count as large
    assert _train(data, tmp_path / "run", caplog) == []


def test_the_threshold_on_split_sizes(tmp_path):
    def splits(n_train: int, n_val: int, n_test: int) -> dict[str, Samples]:
        def part(n: int, start: int) -> Samples:
            paths = [tmp_path / f"{start + i}.png" for i in range(n)]
            return Samples(paths, [i % 2 for i in range(n)], ["a", "b"], [p.stem for p in paths], tmp_path)

        return {"train": part(n_train, 0), "val": part(n_val, n_train), "test": part(n_test, n_train + n_val)}

    config = TrainConfig(data=str(tmp_path / "photos"))
    below = SMALL_DATA_HINT_IMAGES - 1
    assert small_data_hint(config, splits(below - 300, 100, 200)).startswith(f"hint: 300 of these {below} images")
    assert small_data_hint(config, splits(SMALL_DATA_HINT_IMAGES - 300, 100, 200)) is None
    assert small_data_hint(config, splits(100, 0, 0)) is None
