"""One row of the command table: a sub-command's name, its flags and the function that runs it.

Adding a command is adding a :class:`Command` to :data:`resnexus.cli.COMMANDS` (and its description
and examples to :data:`~resnexus.cli.guide.GUIDE`); ``main`` runs whatever the table holds, so there
is no dispatch code to keep in step with the parsers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.config import field_help
from .guide import GUIDE

# the handler of a command: the parsed arguments and the argv as typed (to re-launch or to suggest
# the same command with --resume) -> the exit status
Handler = Callable[[argparse.Namespace, Sequence[str]], int]


@dataclass(frozen=True)
class Command:
    """A sub-command: ``add_arguments`` fills its parser, ``run`` does the work."""

    name: str
    help: str  # its line in `resnexus --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler
    epilog: str = ""  # printed after the examples
    # True: flags not typed are absent from the parsed arguments, so only what was typed overrides
    # --config and the recipe defaults (train, compare)
    only_typed: bool = False

    def register(self, commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """Add this command's parser, with its description and examples from :data:`GUIDE`."""
        description, examples = GUIDE[self.name]
        text = "examples:\n" + "\n".join("  " + line for line in examples)
        text += "\n\n" + self.epilog if self.epilog else ""
        extra: dict[str, Any] = {"argument_default": argparse.SUPPRESS} if self.only_typed else {}
        parser = commands.add_parser(
            self.name,
            description=description,
            epilog=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            help=self.help,
            **extra,
        )
        self.add_arguments(parser)
        return parser


def config_option(p: argparse._ActionsContainer, flag: str, dest: str | None = None, **kwargs: Any) -> None:
    """A flag for a TrainConfig field, with the field's help (defaults included) from engine/config.py."""
    dest = dest or flag.removeprefix("--").replace("-", "_")
    p.add_argument(flag, dest=dest, help=field_help(dest), **kwargs)
