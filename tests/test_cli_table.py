"""The command line is a table: every row has a parser and a handler, and ``main`` runs the row of
the command typed (no dispatch code to keep in step with the parsers)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from resnexus import cli
from resnexus.engine.config import CHOICES


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_in_the_table_has_a_parser_and_a_handler():
    parsers = _subparsers()
    assert list(parsers) == list(cli.COMMANDS)  # the parser is built from the table, in its order
    for name, command in cli.COMMANDS.items():
        assert command.name == name
        assert callable(command.run) and callable(command.add_arguments), name
        assert parsers[name].description, name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["models", "resnet*", "--markdown"], {"pattern": "resnet*", "markdown": True}),
        (["export", "--checkpoint", "run", "--output", "m.onnx"], {"format": "onnx", "opset": None}),
        (["train", "--epochs", "3"], {"epochs": 3}),
    ],
)
def test_main_runs_the_handler_of_the_command_typed(monkeypatch, argv, expected):
    calls = []

    def handler(args: argparse.Namespace, typed) -> int:
        calls.append((args, list(typed)))
        return 7

    name = argv[0]
    monkeypatch.setitem(cli.COMMANDS, name, dataclasses.replace(cli.COMMANDS[name], run=handler))
    assert cli.main(argv) == 7
    ((args, typed),) = calls
    assert args.command == name and typed == argv
    assert {k: getattr(args, k) for k in expected} == expected


def test_train_only_sees_the_flags_typed(monkeypatch):
    """train and compare leave untyped flags out, so a --config file's values are not overridden."""
    seen = []
    monkeypatch.setitem(
        cli.COMMANDS, "train", dataclasses.replace(cli.COMMANDS["train"], run=lambda a, _: seen.append(a) or 0)
    )
    cli.main(["train", "--lr", "0.5"])
    assert vars(seen[0]) == {"command": "train", "lr": 0.5}


def test_a_handlers_bad_input_is_one_line_and_status_2(monkeypatch, capsys):
    def refuses(args, typed) -> int:
        raise ValueError("no such thing")

    monkeypatch.setitem(cli.COMMANDS, "models", dataclasses.replace(cli.COMMANDS["models"], run=refuses))
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == "resnexus models: error: no such thing\n"


def test_the_choice_flags_offer_what_the_config_accepts():
    """--optimizer, --precision, ... take their choices from engine/config.py's CHOICES."""
    for name in ("train", "compare"):
        actions = {a.dest: a for a in _subparsers()[name]._actions}
        for field, choices in CHOICES.items():
            if field in actions:
                assert tuple(actions[field].choices) == choices, (name, field)
    assert "framework" in {a.dest for a in _subparsers()["train"]._actions}
