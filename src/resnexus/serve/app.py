"""``resnexus serve``: a checkpoint behind an HTTP API and a web page (FastAPI + uvicorn).

Probabilities come from :class:`resnexus.engine.inference.Predictor`, the code path ``predict``
uses, through the dynamic :class:`~resnexus.serve.batching.Batcher`. The app is assembled here from
its parts: the endpoints (:mod:`.routes`) and their response models (:mod:`.schemas`), the server's
state (:mod:`.state`), reading uploads (:mod:`.uploads`) and the JSON errors (:mod:`.errors`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import errors
from .options import ServeOptions, exposure_warning
from .routes import ENDPOINTS, STATIC, router
from .state import NOT_A_DIAGNOSIS, ServerState, model_card
from .uploads import FIELD, Upload, UploadError, decode_upload, read_uploads

__all__ = [
    "FIELD",
    "NOT_A_DIAGNOSIS",
    "Upload",
    "UploadError",
    "create_app",
    "decode_upload",
    "model_card",
    "read_uploads",
    "serve",
]

logger = logging.getLogger(__name__)


def create_app(checkpoint: str | Path, options: ServeOptions | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI app serving ``checkpoint`` (a checkpoint file, run / CV directory or .onnx file).

    ``overrides`` are :class:`ServeOptions` fields (``max_batch=``, ``max_wait_ms=``,
    ``batching=``, ``limits=``) replacing those of ``options``; every value is checked against its
    range first (``ValueError`` naming it). The model loads here, so a bad checkpoint fails before a
    port is bound.
    """
    options = dataclasses.replace(options or ServeOptions(), **overrides)
    server = ServerState.load(checkpoint, options)
    card = server.card

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        logger.info(f"serving {card.model} ({', '.join(card.classes)}) from {server.checkpoint}")  # log may name paths
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests; the batcher answers what is queued
            server.stop()

    app = FastAPI(
        title="resnexus serve",
        description=f"{card.model} classifying images into {', '.join(card.classes)}. {NOT_A_DIAGNOSIS}.",
        version="1",
        lifespan=lifespan,
    )
    app.state.server = server
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    errors.install(app, ENDPOINTS)
    app.include_router(router)
    return app


def serve(checkpoint: str | Path, options: ServeOptions | None = None, **overrides: Any) -> None:
    """Run the server until SIGINT / SIGTERM; in-flight requests are finished before it exits.

    ``overrides`` are :class:`ServeOptions` fields (``host=``, ``port=``, ...), as for create_app.
    A host other machines can reach is served with a warning: the server has no authentication.
    """
    import uvicorn

    options = dataclasses.replace(options or ServeOptions(), **overrides)
    app = create_app(checkpoint, options)
    if (warning := exposure_warning(options.host)) is not None:
        logger.warning(warning)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=30)
