"""The command line: help text generated from the defaults TrainConfig and the recipes define, and
library log messages shown as plain lines for the length of one command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shlex

import pytest

from resnexus import cli
from resnexus.cli import main, training
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
    monkeypatch.setitem(cli.COMMANDS, "models", dataclasses.replace(cli.COMMANDS["models"], run=_logs_three_levels))
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
    monkeypatch.setattr(training, "_launch_torchrun", lambda *args: pytest.fail("torchrun launched"))
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


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser, by name, as build_parser makes them."""
    (action,) = (a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_and_examples_the_parser_accepts(monkeypatch):
    """`resnexus COMMAND --help` teaches: what the command is for, then example lines that parse as shown."""
    monkeypatch.setenv("COLUMNS", "100")
    commands = _commands()
    assert {"train", "evaluate", "predict", "explain", "export", "compare", "check-data", "models", "serve"} <= set(
        commands
    )
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description and sub.description.count("\n") >= 1, name  # 2-4 lines, kept as written
        assert sub.description in text, name
        examples = [line.strip() for line in text.split("examples:", 1)[1].splitlines() if line.strip()]
        examples = [line for line in examples if line.startswith("resnexus ")]
        assert len(examples) >= 3 if name != "serve" else examples, name
        for line in examples:
            argv = shlex.split(line, comments=True)[1:]
            assert argv[0] == name, line
            try:
                args = cli.build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"the example {line!r} does not parse")
            assert args.command == name


def test_serve_help_keeps_the_reverse_proxy_advice_after_its_examples(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = _commands()["serve"].format_help()
    assert text.index("resnexus serve --checkpoint") < text.index("reverse_proxy 127.0.0.1:8000")


def test_train_and_compare_help_show_their_flags_in_sections(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    titles = [
        "data:",
        "model:",
        "recipe:",
        "augmentation:",
        "cross-validation:",
        "distributed & performance:",
        "output:",
    ]
    section = {}  # (command, flag) -> the section title above it
    for name in ("train", "compare"):
        lines = _commands()[name].format_help().splitlines()
        assert [line for line in lines if line in titles] == titles, name
        title = None
        for line in lines:
            if line in titles:
                title = line
            elif line.startswith("  --"):
                section[name, line.split()[0]] = title
        assert section[name, "--group-by"] == section[name, "--data"] == "data:", name
        assert section[name, "--epochs"] == "recipe:" and section[name, "--mixup"] == "augmentation:", name
        assert section[name, "--folds"] == "cross-validation:" and section[name, "--out"] == "output:", name
        assert section[name, "--precision"] == "distributed & performance:", name
    assert section["train", "--weights"] == section["compare", "--models"] == "model:"
    assert section["train", "--nproc"] == section["compare", "--jobs"] == "distributed & performance:"
    assert section["train", "--jobs"] == section["compare", "--repeats"] == "cross-validation:"
    assert section["train", "--resume"] == "output:"


def test_group_by_and_data_help_explain_the_conventions(capsys, monkeypatch):
    help = _option_help(capsys, monkeypatch)
    assert (
        "'patient': the file stem without a trailing _N (a13_1.jpg and a13_2.jpg are patient a13" in help["--group-by"]
    )
    assert "regular expression searched in the file name" in help["--group-by"]
    assert "first capture group, else the whole match" in help["--group-by"]
    assert "for a CSV" in help["--group-by"]
    assert "a CSV file with path,label columns" in help["--data"]


def test_a_reader_that_stops_early_gets_no_traceback():
    """`resnexus models | head`: the reader may close the pipe before the table is written (``true``
    closes it at once, while resnexus is still starting: the write always meets a closed pipe)."""
    import subprocess
    import sys

    command = f"{sys.executable} -m resnexus models | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.stderr == ""  # before: a BrokenPipeError traceback and status 1
    assert done.returncode == 141  # ended by the closed pipe, as a shell command killed by SIGPIPE
