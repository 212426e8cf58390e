"""Every serve option has one range, checked by the CLI (exit 2, one line naming the option) and by
create_app / ServeOptions (ValueError naming it) alike; a reachable host is served with a warning."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re

import pytest

from resnexus.cli import main
from resnexus.serve.options import (
    BOUNDS,
    MIB,
    Limits,
    ServeOptions,
    add_flags,
    exposure_warning,
    from_flags,
    is_loopback,
)

BAD_VALUES = ("-1", "0", "nan", "inf", "1e400", "1e15", "99999999999999999999999", "abc")
# flag -> (the range the message names, the values of BAD_VALUES inside that range)
FLAGS = {
    "--port": ("an integer from 1 to 65535", set()),
    "--max-batch": ("an integer from 1 to 1024", set()),
    "--max-wait-ms": ("a number from 0 to 10000 ms", {"0"}),
    "--max-file-mb": ("a number above 0 and up to 1024 MB", set()),
    "--max-files": ("an integer from 1 to 1024", set()),
    "--coverage": ("a number above 0 and below 1", set()),
}


@pytest.mark.parametrize(
    ("flag", "value"), [(flag, value) for flag, (_, fine) in FLAGS.items() for value in BAD_VALUES if value not in fine]
)
def test_cli_refuses_each_bad_value_naming_the_option_and_its_range(flag, value, capsys, tmp_path):
    described = FLAGS[flag][0]
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--checkpoint", str(tmp_path / "never-read"), flag, value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"resnexus serve: error: argument {flag}: must be {described}, got '{value}'"


def test_help_documents_every_range(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, (described, _) in FLAGS.items():
        assert f"{flag} {flag.removeprefix('--').replace('-', '_').upper()}" in text
        assert described in text, flag
    assert "no authentication" in text and "reverse_proxy 127.0.0.1:8000" in text and "auth_basic" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", -1),
        ("port", 65536),
        ("max_batch", 0),
        ("max_batch", 16.0),
        ("max_wait_ms", -5),
        ("max_wait_ms", 1e15),
        ("max_wait_ms", float("nan")),
        ("max_wait_ms", float("inf")),
        ("coverage", 0.0),
        ("coverage", 1.0),
        ("coverage", 1.5),
        ("coverage", float("nan")),
        ("coverage", "0.9"),
    ],
)
def test_serve_options_refuse_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be {re.escape(BOUNDS[field].describe())}, got "):
        ServeOptions(**{field: value})
    with pytest.raises(ValueError, match=rf"^{field} must be"):  # replace() checks again
        dataclasses.replace(ServeOptions(), **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_file_bytes", 0), ("max_file_bytes", 2**40), ("max_files", 0), ("max_files", 10**6), ("max_pixels", -1)],
)
def test_limits_refuse_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be {re.escape(BOUNDS[field].describe())}, got {value}$"):
        Limits(**{field: value})


def test_create_app_checks_options_before_loading_the_model(tmp_path):
    from resnexus.serve import create_app

    missing = tmp_path / "no-such-checkpoint"  # a check after loading would say "not found"
    with pytest.raises(ValueError, match=r"^max_wait_ms must be a number from 0 to 10000 ms, got 1000000000000000\.0$"):
        create_app(missing, max_wait_ms=1e15)
    with pytest.raises(ValueError, match=r"^port must be"):
        create_app(missing, ServeOptions(), port=0)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "LocalHost", "::1", "[::1]"])
def test_loopback_hosts_are_served_quietly(host):
    assert is_loopback(host)
    assert exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org"])
def test_a_host_others_can_reach_gets_a_warning(host):
    assert not is_loopback(host)
    warning = exposure_warning(host)
    assert warning is not None
    assert warning.startswith(f"serving on {host}: other machines can reach this server")
    assert "no authentication" in warning and "reverse proxy" in warning


def test_serve_logs_the_warning_before_binding(monkeypatch, run_dir, caplog):
    """serve() logs the warning for 0.0.0.0 (uvicorn itself is replaced: nothing is bound)."""
    import uvicorn

    from resnexus.serve import serve

    bound = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: bound.append(kwargs))
    with caplog.at_level(logging.WARNING, logger="resnexus.serve.app"):
        serve(run_dir, host="0.0.0.0", port=8123)
    assert bound[0]["host"] == "0.0.0.0" and bound[0]["port"] == 8123
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [exposure_warning("0.0.0.0")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnexus.serve.app"):
        serve(run_dir)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _serve_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnexus serve")
    add_flags(parser)
    return parser


def test_from_flags_gives_the_options_the_flags_say():
    assert from_flags(_serve_flags().parse_args([])) == ServeOptions()
    given = ["--host", "0.0.0.0", "--port", "9000", "--max-batch", "8", "--max-wait-ms", "2.5", "--no-batching"]
    args = _serve_flags().parse_args([*given, "--max-file-mb", "0.5", "--max-files", "4"])
    assert from_flags(args) == ServeOptions(
        host="0.0.0.0",
        port=9000,
        max_batch=8,
        max_wait_ms=2.5,
        batching=False,
        limits=Limits(max_file_bytes=MIB // 2, max_files=4),
    )
    assert from_flags(_serve_flags().parse_args(["--coverage", "0.8"])) == ServeOptions(coverage=0.8)
    assert from_flags(_serve_flags().parse_args(["--no-calibration"])) == ServeOptions(calibrated=False)
    tiny = _serve_flags().parse_args(["--max-file-mb", "1e-9"])  # above 0, but under one byte: one byte
    assert from_flags(tiny).limits.max_file_bytes == 1


def test_coverage_and_no_calibration_are_refused_together(capsys, run_dir):
    message = "coverage needs the calibration: --coverage and --no-calibration ask for opposite things"
    with pytest.raises(ValueError, match=f"^{message}$"):
        ServeOptions(coverage=0.9, calibrated=False)
    assert main(["serve", "--checkpoint", str(run_dir), "--coverage", "0.9", "--no-calibration"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"resnexus serve: error: {message}"


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-batch", "0"), ("--max-wait-ms", "nan"), ("--port", "65536"), ("--coverage", "1")]
)
def test_add_flags_refuses_values_out_of_range(flag, value, capsys):
    with pytest.raises(SystemExit):
        _serve_flags().parse_args([flag, value])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"resnexus serve: error: argument {flag}: must be {FLAGS[flag][0]}, got '{value}'"


def test_the_cli_serve_command_has_the_flags_of_add_flags(capsys):
    """The CLI's serve flags are add_flags' ones: the same flags, with the same help (defaults included)."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    cli_help = " ".join(capsys.readouterr().out.split())
    for action in _serve_flags()._actions:
        if action.dest != "help":
            assert action.option_strings[0] in cli_help
            assert " ".join(action.help.split()) in cli_help, action.dest
