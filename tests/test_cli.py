"""The command line: help text generated from the defaults TrainConfig and the recipes define, and
library log messages shown as plain lines for the length of one command."""

from __future__ import annotations

import logging
import re

import pytest

from resnexus import cli
from resnexus.cli import main
from resnexus.engine import config as config_module
from resnexus.engine.config import (
    ADAMW_LR,
    ADAMW_WEIGHT_DECAY,
    BUILTIN_RECIPE,
    DEFAULT_MODEL,
    DEFAULT_RECIPE,
    MIN_VAL_FOR_SELECTION,
    SGD_WEIGHT_DECAY,
    SMALL_DATA_IMAGE_SIZE,
    TrainConfig,
)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option_help(capsys, monkeypatch, command: str = "train") -> dict[str, str]:
    """``--flag`` -> its help text on one line (wide terminal: argparse wraps at $COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    return {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks if block.strip()}


def test_train_help_states_the_defaults_the_config_applies(capsys, monkeypatch):
    help = _option_help(capsys, monkeypatch)
    for key in ("epochs", "batch_size", "optimizer", "warmup_epochs"):
        flag = "--" + key.replace("_", "-")
        assert f"default {_number(DEFAULT_RECIPE[key])}" in help[flag], flag
        assert f"built-in digits: {_number(BUILTIN_RECIPE[key])}" in help[flag], flag
    assert f"default {DEFAULT_MODEL}" in help["--model"]
    assert f"default {_number(ADAMW_LR)} for AdamW" in help["--lr"]
    decay = f"default {_number(ADAMW_WEIGHT_DECAY)} (AdamW) or {_number(SGD_WEIGHT_DECAY)} (SGD)"
    assert decay in help["--weight-decay"]
    assert f"default {SMALL_DATA_IMAGE_SIZE} for 224-px models" in help["--image-size"]
    assert f">= {MIN_VAL_FOR_SELECTION} validation images" in help["--select"]
    fields = TrainConfig()
    for key in ("label_smoothing", "val_fraction", "test_fraction", "checkpoint_every", "seed"):
        flag = "--" + key.replace("_", "-")
        assert f"default {_number(getattr(fields, key))}" in help[flag], flag


def test_help_follows_a_changed_recipe(capsys, monkeypatch):
    """The help is built from the recipe when the parser is built: nothing to keep in step by hand."""
    monkeypatch.setitem(config_module.DEFAULT_RECIPE, "epochs", 7)
    assert "default 7 " in _option_help(capsys, monkeypatch)["--epochs"]
    assert "default 7 " in _option_help(capsys, monkeypatch, "compare")["--epochs"]


def test_cache_dir_help_names_the_one_variable(capsys, monkeypatch):
    help = _option_help(capsys, monkeypatch)["--cache-dir"]
    assert "$RESNEXUS_HOME" in help and "RESNEXUS_CACHE_DIR" not in help


def _logs_three_levels(args, argv) -> int:
    log = logging.getLogger("resnexus.engine.fit")
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    return 0


def test_messages_are_plain_lines_on_stdout_once_per_command(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_dispatch", _logs_three_levels)
    package = logging.getLogger("resnexus")
    before = (list(package.handlers), package.level, package.propagate)
    for _ in range(2):  # a second main() in the same process neither stacks handlers nor repeats lines
        assert main(["models"]) == 0
        assert capsys.readouterr().out == "an info line\na warning line\n"
    assert (list(package.handlers), package.level, package.propagate) == before  # the library is left as it was


def test_nproc_refuses_a_batch_too_small_to_share_in_one_line_before_torchrun(tmp_path, capsys, monkeypatch):
    """Under --nproc 2 a global batch of 3 would give one process a single image (BatchNorm fails):
    refused once, by the launching command, with status 2 (issue 15, item 8)."""
    from tests.helpers import bright_and_dark_folder

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli, "_launch_torchrun", lambda *args: pytest.fail("torchrun launched"))
    data = bright_and_dark_folder(tmp_path / "data", per_class=3, size=8)
    assert main(["train", "--nproc", "2", "--batch-size", "3", "--data", str(data), "--model", "lenet"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "resnexus train: error: --batch-size 3 is the global batch: 2 processes need at least 4 "
        "(2 images each, for BatchNorm)\n"
    )
    assert "launching" not in captured.out


def test_models_names_an_unknown_family_and_lists_the_known_ones(capsys):
    assert main(["models", "--family", "nonexistent"]) == 2
    assert capsys.readouterr().err == (
        "resnexus models: error: unknown family 'nonexistent'; known families: densenet, fractalnet, lenet, "
        "res2net, resnet, resnet_v2, resnext\n"
    )
    assert main(["models", "nothing*", "--family", "lenet"]) == 2
    assert capsys.readouterr().err == "resnexus models: error: no model matches 'nothing*' in family lenet\n"
    assert main(["models", "--family", "lenet"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("lenet ")
