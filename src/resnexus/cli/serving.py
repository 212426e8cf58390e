"""``serve``: an HTTP API for a checkpoint.

The flags and the options they make are two functions, :func:`add_serve_flags` and
:func:`serve_options_from_flags`, so they can be handed to the server's own options module whole.
serve/ is imported only inside the functions: parsing the command line must not need FastAPI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .command import Command
from .guide import SERVE_EPILOG

if TYPE_CHECKING:
    from ..serve.options import ServeOptions


def add_serve_flags(sv: argparse.ArgumentParser) -> None:
    """The server's flags, with their ranges and defaults from ServeOptions."""
    from ..serve.options import BOUNDS, MIB, ServeOptions, argument_type  # no FastAPI: the flags' ranges

    default = ServeOptions()

    def bounded(flag: str, name: str, value: float, what: str) -> None:
        text = f"{what}: {BOUNDS[name].describe()} (default {value:g})"
        sv.add_argument(flag, type=argument_type(name), default=value, help=text)

    sv.add_argument("--checkpoint", required=True, help="a checkpoint, a run or cross-validation directory, or .onnx")
    sv.add_argument("--host", default=default.host, help=f"address to bind (default {default.host}: this machine only)")
    bounded("--port", "port", default.port, "port")
    bounded("--max-batch", "max_batch", default.max_batch, "images gathered into one batch at most")
    bounded("--max-wait-ms", "max_wait_ms", default.max_wait_ms, "how long a batch waits for more images")
    sv.add_argument("--no-batching", action="store_true", help="run every image as a batch of one")
    mb = default.limits.max_file_bytes / MIB
    bounded("--max-file-mb", "max_file_mb", mb, "largest upload per image")
    bounded("--max-files", "max_files", default.limits.max_files, "most images per request")


def serve_options_from_flags(args: argparse.Namespace) -> ServeOptions:
    """The ServeOptions the flags of :func:`add_serve_flags` ask for."""
    from ..serve.options import MIB, Limits, ServeOptions

    max_file_bytes = max(1, round(args.max_file_mb * MIB))
    return ServeOptions(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        limits=Limits(max_file_bytes=max_file_bytes, max_files=args.max_files),
    )


def run_serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    options = serve_options_from_flags(args)
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
