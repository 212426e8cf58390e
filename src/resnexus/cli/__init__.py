"""The ``resnexus`` command: argument parsing only; every command calls a function of the API.

:data:`COMMANDS` is the table of sub-commands: each row names its flags and its handler
(:class:`~resnexus.cli.command.Command`), and :func:`main` parses the arguments and runs the
handler of the command typed. The commands live by theme: training.py (train, compare,
calibrate, check-data), inference.py (evaluate, predict, explain, export), catalog.py (models), serving.py
(serve); guide.py holds what ``--help`` says of each.

The library reports progress through :mod:`logging` (logger ``resnexus``); the command decides how
it looks: one plain line per message on standard output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..engine.interrupt import TrainingInterrupted
from .catalog import MODELS, models_table, weights_table
from .command import Command
from .guide import DESCRIPTION, EPILOG
from .inference import EVALUATE, EXPLAIN, EXPORT, PREDICT
from .serving import SERVE
from .training import CALIBRATE, CHECK_DATA, COMPARE, TRAIN, train_config_from_args

__all__ = ["COMMANDS", "Command", "build_parser", "main", "models_table", "train_config_from_args", "weights_table"]

# in the order `resnexus --help` lists them
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (TRAIN, COMPARE, CALIBRATE, EVALUATE, PREDICT, EXPLAIN, EXPORT, CHECK_DATA, MODELS, SERVE)
}


def build_parser() -> argparse.ArgumentParser:
    """The ``resnexus`` parser, with one sub-parser per row of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="resnexus", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('resnexus').__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.register(commands)
    return parser


_LOG_HANDLER = "resnexus-cli"  # the name of the handler main() installs, so a second main() replaces it


@contextmanager
def _messages_on_stdout(level: int = logging.INFO) -> Iterator[None]:
    """While a command runs, the library's log messages are plain lines on the current sys.stdout.

    The handler is removed afterwards and the logger's settings restored, so calling ``main()``
    repeatedly in one process (tests, notebooks) neither stacks handlers nor changes what the
    library does outside the command. Not propagating avoids a second copy through a root handler.
    """
    package = logging.getLogger("resnexus")
    for stale in [h for h in package.handlers if h.get_name() == _LOG_HANDLER]:
        package.removeHandler(stale)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_LOG_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    try:
        yield
    finally:
        handler.flush()
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``resnexus ARGV``; bad input is one line on stderr and status 2, not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with _messages_on_stdout():
            return COMMANDS[args.command].run(args, argv)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: one clear line
        print(f"resnexus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `resnexus models | head`: the reader has what it wanted, not an error
        # Python would report the pipe again when it flushes stdout at exit: point stdout at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except KeyboardInterrupt as interrupted:
        if isinstance(interrupted, TrainingInterrupted):  # saved: say how to continue
            print(f"resnexus {args.command}: {interrupted}", file=sys.stderr)
            return interrupted.exit_code
        print(f"resnexus {args.command}: interrupted", file=sys.stderr)
        return getattr(interrupted, "exit_code", 130)
