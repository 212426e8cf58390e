"""Generated reference pages (run by mkdocs-gen-files on every `mkdocs build`), so they cannot drift.

A page under docs/ holds its prose and a marker line such as ``<!-- generated: cli -->``; this
script replaces the marker with what the code says today: the argparse parsers' help
(``resnexus.cli.build_parser``), the model zoo and the published weights (the registry), the run
directory's files (``RunDir.layout``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # a clean clone without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by command name, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Every command's ``--help``, formatted at a fixed width so the page is the same on every machine."""
    from resnexus.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width
    parser = build_parser()
    parts = ["## resnexus", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        parts += [f"## resnexus {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def models_reference() -> str:
    """The zoo's table (``resnexus models --markdown``)."""
    from resnexus import list_models
    from resnexus.cli import models_table

    return models_table(list_models(), markdown=True)


def weights_reference() -> str:
    """The published weights' table (``resnexus models --weights --markdown``)."""
    from resnexus import list_models
    from resnexus.cli import weights_table

    return weights_table(list_models(), markdown=True)


def train_config_reference() -> str:
    """Every ``TrainConfig`` field: its type, default, ``resnexus train`` flag and help, from the
    dataclass and the parser themselves, so a new field or flag shows up here by itself."""
    from dataclasses import MISSING, fields

    from resnexus.cli import build_parser
    from resnexus.engine.config import TrainConfig, field_help

    flags, helps = {}, {}
    for action in _subcommands(build_parser())["train"]._actions:
        if action.option_strings:
            flags.setdefault(action.dest, max(action.option_strings, key=len))
            helps.setdefault(action.dest, action.help or "")
    rows = ["| field | type | default | flag of `resnexus train` | what it sets |", "|---|---|---|---|---|"]
    for f in fields(TrainConfig):
        default = repr(f.default_factory()) if f.default is MISSING else repr(f.default)
        flag = flags.get(f.name) or flags.get(f.name.removesuffix("_file"))
        described = field_help(f.name) if "help" in f.metadata else f.metadata.get("doc") or helps.get(f.name, "")
        cells = [
            f"`{f.name}`",
            f"`{str(f.type).replace(' | ', ' or ')}`",
            f"`{default}`" if default else "",
            f"`{flag}`" if flag else "(YAML / Python only)",
        ]
        for raw, markdown in (("|", "\\|"), ("[", "\\["), ("]", "\\]"), ("<", "&lt;")):  # plain text in a table cell
            described = described.replace(raw, markdown)
        rows.append("| " + " | ".join([*cells, described]) + " |")
    return "\n".join(rows)


def run_directory_reference() -> str:
    """The run directory's files, one table per kind of run, from ``RunDir.layout()`` (the class that
    owns the names), so a renamed or new file shows up here by itself."""
    from resnexus.engine.rundir import RunDir

    titles = {
        "training": "A training run (`resnexus train --out RUN_DIR`; also each fold, the refit and each model "
        "of a comparison)",
        "cross-validation": "A cross-validation run (`resnexus train --folds K --out RUN_DIR`)",
        "comparison": "A comparison (`resnexus compare --out DIR`), in each model's run directory",
    }
    parts: list[str] = []
    for kind, title in titles.items():
        parts += [f"## {title}", "", "| file | what it holds |", "|---|---|"]
        parts += [f"| `{path}` | {what} |" for run, path, what in RunDir.layout() if run == kind]
        parts.append("")
    return "\n".join(parts)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli_reference,
    "train-config": train_config_reference,
    "models": models_reference,
    "weights": weights_reference,
    "run-directory": run_directory_reference,
}


def render(text: str) -> str:
    """``text`` with every ``<!-- generated: NAME -->`` line replaced by ``GENERATORS[NAME]()``."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("<!-- generated:") and stripped.endswith("-->"):
            name = stripped.removeprefix("<!-- generated:").removesuffix("-->").strip()
            out.append(GENERATORS[name]())
        else:
            out.append(line)
    return "\n".join(out) + "\n"


PAGES = ("reference/cli.md", "reference/models.md", "reference/python-api.md", "reference/run-directory.md")

if __name__ == "<run_path>":  # run by mkdocs-gen-files
    import mkdocs_gen_files

    for page in PAGES:
        source = (ROOT / "docs" / page).read_text(encoding="utf-8")
        with mkdocs_gen_files.open(page, "w") as f:
            f.write(render(source))
