"""The endpoints, on one :class:`~fastapi.APIRouter`; each reaches the server's state through
``Depends(server_state)`` and declares its response model (see :mod:`.schemas`)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..engine.explain import explain_image
from .batching import Unavailable
from .options import BOUNDS
from .schemas import (
    PNG_RESPONSE,
    PROMETHEUS_RESPONSE,
    ErrorResponse,
    Health,
    ModelInfo,
    Prediction,
    PredictResponse,
    Ready,
    error_responses,
)
from .state import ServerState, server_state
from .uploads import UploadError, decode_upload, read_uploads

STATIC = Path(__file__).parent / "static"

router = APIRouter()
Server = Annotated[ServerState, Depends(server_state)]
Coverage = Annotated[
    float | None,
    Query(description=f"the prediction sets' coverage, {BOUNDS['coverage'].describe()} (a calibrated model only)"),
]


def error(status: int, message: str) -> JSONResponse:
    """The JSON every refusal and failure answers: ``{"error": message}``."""
    return JSONResponse(ErrorResponse(error=message).model_dump(), status_code=status)


async def _decoded_crops(request: Request, server: ServerState) -> list[tuple[str, torch.Tensor]]:
    """(file name, the model's crop) of every uploaded image."""
    limits = server.options.limits
    uploads = await read_uploads(request, limits)
    # decoding a 20 MB photo takes a while: in a worker thread, so the loop keeps answering
    return await anyio.to_thread.run_sync(
        lambda: [(u.name, server.predictor.crop(decode_upload(u, limits.max_pixels))) for u in uploads]
    )


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.post(
    "/v1/predict",
    summary="class probabilities of one or more images (multipart field 'files')",
    responses=error_responses(500, 503),
)
async def predict(request: Request, server: Server, coverage: Coverage = None) -> PredictResponse:
    """With a calibration (a `train --folds K` run's model), the probabilities are calibrated, the
    operating threshold decides the label, and `set` holds the classes that cannot be ruled out at
    `?coverage=` (default: the server's `--coverage`)."""
    started = time.perf_counter()
    _check_coverage(server, coverage)
    crops = await _decoded_crops(request, server)
    batcher = server.batcher
    if batcher is None:  # the app's lifespan has not started it
        raise Unavailable("not ready: starting or shutting down")
    rows = await asyncio.gather(*(batcher.submit(crop) for _, crop in crops))
    server.metrics.images.inc(len(rows))
    names = server.class_names
    judged = server.judge(np.stack(rows), coverage)  # per row: the same whichever batches the rows came in
    sets = [None] * len(rows) if judged.sets is None else [[c for c, i in zip(names, row) if i] for row in judged.sets]
    predictions = [
        Prediction(
            file=name,
            label=names[int(label)],
            probabilities={c: float(p) for c, p in zip(names, probs)},
            set=members,
        )
        for (name, _), probs, label, members in zip(crops, judged.probs, judged.labels, sets)
    ]
    calibration = judged.calibration
    return PredictResponse(
        model=server.card.model,
        calibrated=calibration is not None,
        coverage=judged.coverage,
        threshold=calibration.threshold if calibration is not None else None,
        predictions=predictions,
        time_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _check_coverage(server: ServerState, coverage: float | None) -> None:
    """Refuse a ``?coverage=`` out of range, or asked of a server without calibration (400)."""
    if coverage is None:
        return
    try:
        BOUNDS["coverage"].check("coverage", coverage)
    except ValueError as bad:
        raise UploadError(400, "bad-coverage", str(bad)) from None
    if server.calibration is None:
        raise UploadError(
            400,
            "no-calibration",
            "coverage needs a calibrated model: this server's model has no calibration (or runs with --no-calibration)",
        )


@router.post(
    "/v1/explain",
    summary="Grad-CAM overlay (PNG) of one image for its predicted class or ?target=CLASS",
    response_class=Response,
    responses=PNG_RESPONSE | error_responses(500, 501),
)
async def explain(request: Request, server: Server, target: str | None = None) -> Response:
    cam_model, names = server.cam_model, server.class_names
    if cam_model is None:
        raise UploadError(501, "no-gradcam", "Grad-CAM needs a PyTorch checkpoint; this server runs an ONNX model")
    if target is not None and target not in names:
        raise UploadError(400, "unknown-class", f"target {target!r} is not one of the classes {names}")
    uploads = await read_uploads(request, server.options.limits)
    if len(uploads) != 1:
        raise UploadError(400, "one-image", f"explain takes one image, got {len(uploads)}")

    def run() -> tuple[np.ndarray, int, int, bytes]:
        image = decode_upload(uploads[0], server.options.limits.max_pixels)
        with server.cam_lock:
            raw, index, overlay = explain_image(cam_model, server.meta, image, target)
            judged = server.judge(raw[None])
            predicted = int(judged.labels[0])
            if target is None and predicted != index:  # the operating threshold chose another class: map that one
                raw, index, overlay = explain_image(cam_model, server.meta, image, names[predicted])
        return judged.probs[0], predicted, index, _png(overlay)

    probs, predicted, index, png = await anyio.to_thread.run_sync(run)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Predicted-Class": quote(names[predicted]),
            "X-Probability": f"{probs[predicted]:.6f}",
            "X-Explained-Class": quote(names[index]),
        },
    )


@router.get(
    "/v1/model",
    summary="the model, its classes, preprocessing, metrics and checkpoint hash",
    responses=error_responses(500),
)
async def model_info(server: Server) -> ModelInfo:
    return server.model_info()


@router.get("/healthz", summary="the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="the model is loaded and the batcher runs",
    response_model=Ready,
    responses=error_responses(503),
)
async def readyz(server: Server) -> Ready | JSONResponse:
    if not server.ready or server.batcher is None:
        return error(503, "not ready: starting or shutting down")
    if not server.batcher.alive:
        return error(503, f"not ready: {server.batcher.stopped_message}")
    return Ready(status="ready", model=server.card.model)


@router.get("/metrics", summary="Prometheus text format", response_class=Response, responses=PROMETHEUS_RESPONSE)
async def prometheus(server: Server) -> Response:
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _png(rgb: np.ndarray, min_side: int = 256) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image, enlarged to ``min_side`` for display if smaller."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if min(image.size) < min_side:
        scale = min_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


ENDPOINTS = frozenset(route.path for route in router.routes)  # the /metrics labels; any other path is "other"
