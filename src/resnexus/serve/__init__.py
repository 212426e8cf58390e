"""``resnexus serve``: a checkpoint behind an HTTP API with dynamic batching, and a web page.

Only the CLI imports this package. :mod:`.options` (the options' defaults and ranges) needs nothing
beyond resnexus; ``create_app`` and ``serve`` need the ``serve`` extra (FastAPI, uvicorn,
python-multipart, prometheus-client) and load it when first used.
"""

from typing import Any

from .options import Limits, ServeOptions

__all__ = ["Limits", "ServeOptions", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    """``create_app`` and ``serve`` import FastAPI: only when asked for (PEP 562)."""
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
