"""``serve``: an HTTP API for a checkpoint.

The server's flags, defaults and range checks have one home, ``serve.options`` (``add_flags`` /
``from_flags``); this module adds the checkpoint and runs the server. serve/ is imported only inside
the functions: parsing the command line must not need FastAPI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .command import Command
from .guide import SERVE_EPILOG


def add_serve_flags(sv: argparse.ArgumentParser) -> None:
    """The checkpoint to serve, then the server's own flags (their defaults and ranges live in serve/options)."""
    from ..serve.options import add_flags  # no FastAPI: the flags' ranges

    sv.add_argument("--checkpoint", required=True, help="a checkpoint, a run or cross-validation directory, or .onnx")
    add_flags(sv)


def run_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..serve.options import from_flags

    options = from_flags(args)
    try:
        from ..serve import serve  # FastAPI, uvicorn: the serve extra
    except ImportError as error:
        raise ValueError(f"resnexus serve needs {error.name}: pip install 'resnexus[serve]'") from None
    serve(args.checkpoint, options)
    return 0


SERVE = Command(
    "serve",
    "an HTTP API and a web page for a checkpoint (FastAPI + uvicorn)",
    add_serve_flags,
    run_serve,
    epilog=SERVE_EPILOG,
)
