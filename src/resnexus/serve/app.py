"""``resnexus serve``: a checkpoint behind an HTTP API and a web page (FastAPI + uvicorn).

Probabilities come from :class:`resnexus.engine.inference.Predictor`, the code path ``predict``
uses, through the dynamic :class:`~resnexus.serve.batching.Batcher`. Uploads are parsed from the
request stream into memory with python-multipart (never spooled to disk, as Starlette's form
parser does above 1 MB), checked against per-file and per-request limits while they arrive, and
decoded from bytes. Every refusal is a 4xx JSON ``{"error": "..."}`` naming the problem.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any
from urllib.parse import quote

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.check import MAX_PIXELS
from ..data.dataset import decode_image_bytes
from ..data.scan import DataError
from ..engine.checkpoint import CV_METRICS_FILE, REFIT_DIR, load_for_inference, resolve_checkpoint
from ..engine.explain import explain_image
from ..engine.inference import Predictor
from .batching import Batcher, Unavailable
from .options import Limits, ServeOptions, exposure_warning

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FIELD = "files"  # the multipart field that carries the images
NOT_A_DIAGNOSIS = "not a diagnosis; for research use"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_PATHS = ("/", "/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics")


class UploadError(Exception):
    """A request refused: HTTP ``status``, a ``reason`` label for /metrics, and the message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Upload:
    name: str
    data: bytes


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The files of a ``multipart/form-data`` request's ``files`` field, parsed in memory as the
    body streams in; over-size files and too many files are refused before the rest is read."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        got = request.headers.get("content-type") or "none"
        raise UploadError(
            415, "wrong-content-type", f"Content-Type must be multipart/form-data with images in '{FIELD}' (got {got})"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad-multipart", "multipart/form-data without a boundary")
    uploads: list[Upload] = []
    part: dict[str, Any] = {}
    problem: list[UploadError] = []

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", data=bytearray(), name=None, filename=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        if part["name"] == FIELD and len(uploads) >= limits.max_files and not problem:
            problem.append(
                UploadError(413, "too-many-files", f"more than {limits.max_files} files in one request (the limit)")
            )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if problem or part["name"] != FIELD:
            return
        part["data"] += data[start:end]
        if len(part["data"]) > limits.max_file_bytes:
            name = part["filename"] or f"{FIELD}[{len(uploads)}]"
            problem.append(
                UploadError(
                    413,
                    "file-too-large",
                    f"{name}: over the limit of {_megabytes(limits.max_file_bytes)} per file",
                )
            )

    def on_part_end() -> None:
        if not problem and part.get("name") == FIELD:
            uploads.append(Upload(part["filename"] or f"{FIELD}[{len(uploads)}]", bytes(part["data"])))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            parser.write(chunk)
            if problem:
                raise problem[0]
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # python-multipart's errors for malformed bodies
        raise UploadError(400, "bad-multipart", f"malformed multipart body: {error}") from None
    if problem:
        raise problem[0]
    if received == 0:
        raise UploadError(400, "empty-body", f"empty request body: send one or more images in the field '{FIELD}'")
    if not uploads:
        raise UploadError(400, "no-files", f"no files: send one or more images in the multipart field '{FIELD}'")
    return uploads


def decode_upload(upload: Upload, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The uint8 RGB image (3, H, W) an upload holds, decoded from memory; refused with the reason
    (not an image, truncated, a decompression bomb) before anything large is allocated."""
    from PIL import Image, UnidentifiedImageError

    name, data = upload.name, upload.data
    if not data:
        raise UploadError(400, "empty-file", f"{name}: the file is empty (0 bytes)")
    limit = f"{max_pixels / 1e6:.0f} MP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError:
        raise UploadError(
            413, "decompression-bomb", f"{name}: more pixels than the {limit} limit: too large to decode safely"
        ) from None
    except UnidentifiedImageError:
        raise UploadError(415, "not-an-image", f"{name}: not an image (first bytes: {data[:12]!r})") from None
    except Exception as error:  # a header Pillow recognises but cannot parse
        raise UploadError(400, "corrupt", f"{name}: cannot be decoded: {error}") from None
    if width * height > max_pixels:
        raise UploadError(
            413,
            "decompression-bomb",
            f"{name}: {width} x {height} = {width * height / 1e6:.0f} MP, over the {limit} limit: "
            "too large to decode safely (a decompression bomb?)",
        )
    try:
        return decode_image_bytes(data, name)
    except DataError as error:
        if "truncated" in str(error).lower():
            raise UploadError(400, "truncated", f"{name}: truncated image: {error}") from None
        raise UploadError(400, "corrupt", str(error)) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_card(source: str | Path, resolved: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/model`` says: the model, its classes and preprocessing, the run's metrics and
    cross-validated accuracy when the checkpoint came from a run / CV directory, the file's hash.

    No server path: the checkpoint and the training data are named by their file / folder name only
    (the API has no authentication, and where the server keeps its files is nobody's business)."""
    run_dir = resolved.parent.parent if resolved.parent.name == "checkpoints" else None
    cv_dir = run_dir.parent if run_dir is not None and run_dir.name == REFIT_DIR else None
    if cv_dir is None and Path(source).is_dir() and (Path(source) / CV_METRICS_FILE).is_file():
        cv_dir = Path(source)
    cv_accuracy = None
    if cv_dir is not None and (record := _read_json(cv_dir / CV_METRICS_FILE)):
        mean, std = record.get("mean", {}), record.get("std", {})
        if "accuracy" in mean:
            folds = record.get("protocol", {}).get("folds")
            cv_accuracy = {"mean": mean["accuracy"], "std": std.get("accuracy"), "folds": folds}
    config = meta.get("config") or {}
    return {
        "model": meta["model_name"],
        "classes": list(meta["class_names"]),
        "preprocessing": {
            "image_size": meta["image_size"],
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "crop_fraction": meta["crop_fraction"],
        },
        "checkpoint": resolved.name,
        "sha256": _sha256(resolved),
        "runtime": "onnxruntime" if resolved.suffix.lower() == ".onnx" else "pytorch",
        "trained_on": {
            "data": _base_name(config.get("data")),
            "images": meta.get("split_sizes"),
            "which": meta.get("trained_on"),
        },
        "metrics": _read_json(run_dir / "metrics.json") if run_dir is not None else None,
        "cv_accuracy": cv_accuracy,
        "notice": NOT_A_DIAGNOSIS,
    }


def _base_name(path: str | None) -> str | None:
    """The last part of a file or folder path, written with / or \\ (a run trained on Windows)."""
    return (PureWindowsPath(path).name or None) if path else None


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process, as in
    tests, do not collide in the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "resnexus_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter(
            "resnexus_errors", "refused or failed requests by reason", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "resnexus_request_duration_seconds", "time to answer a request", ["endpoint"], registry=self.registry
        )
        self.images = Counter("resnexus_images", "images classified", registry=self.registry)
        self.batch_size = Histogram(
            "resnexus_batch_size", "images per model batch", buckets=BATCH_BUCKETS, registry=self.registry
        )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(checkpoint: str | Path, options: ServeOptions | None = None, **overrides: Any) -> FastAPI:
    """The FastAPI app serving ``checkpoint`` (a checkpoint file, run / CV directory or .onnx file).

    ``overrides`` are :class:`ServeOptions` fields (``max_batch=``, ``max_wait_ms=``,
    ``batching=``, ``limits=``) replacing those of ``options``; every value is checked against its
    range first (``ValueError`` naming it). The model loads here, so a bad checkpoint fails before a
    port is bound.
    """
    options = dataclasses.replace(options or ServeOptions(), **overrides)
    limits, batch_limit = options.limits, options.batch_limit
    resolved = resolve_checkpoint(checkpoint)
    model, meta = load_for_inference(resolved)
    cam_model = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else None  # Grad-CAM's own copy
    predictor = Predictor(model, meta)
    card = model_card(checkpoint, resolved, meta)
    names: list[str] = list(meta["class_names"])
    metrics = _Metrics()
    cam_lock = threading.Lock()  # captum hooks into the model: one Grad-CAM at a time

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(
            predictor.probabilities, batch_limit, options.max_wait_ms, on_batch=metrics.batch_size.observe
        )
        app.state.ready = True
        logger.info(f"serving {card['model']} ({', '.join(names)}) from {resolved}")  # the log may name paths
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests; the batcher answers what is queued
            app.state.ready = False
            app.state.batcher.close()

    app = FastAPI(
        title="resnexus serve",
        description=f"{card['model']} classifying images into {', '.join(names)}. {NOT_A_DIAGNOSIS}.",
        version="1",
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.metrics = metrics
    app.state.limits = limits
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        started, status = time.perf_counter(), 500  # 500 unless a response comes back
        try:
            try:
                response = await call_next(request)
            except Exception as error:  # answered here: past this point Starlette re-raises, and
                response = await failed(request, error)  # uvicorn drops the client's keep-alive connection
            status = response.status_code
            return response
        finally:
            endpoint = request.url.path if request.url.path in _PATHS else "other"
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    @app.exception_handler(UploadError)
    async def refused(request: Request, error: UploadError) -> JSONResponse:
        metrics.errors.labels(error.reason).inc()
        return _error(error.status, error.message)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, error: Unavailable) -> JSONResponse:
        metrics.errors.labels("unavailable").inc()
        return _error(503, f"service unavailable: {error}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        metrics.errors.labels(f"http-{error.status_code}").inc()
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid-request").inc()
        return _error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        logger.exception(f"{request.url.path}: internal error")
        metrics.errors.labels("internal").inc()
        # the type only: an exception's text may name server paths or data, which a client must not see
        return _error(500, f"internal error ({type(error).__name__}): the server's log has the details")

    async def decoded(request: Request) -> list[tuple[str, torch.Tensor]]:
        uploads = await read_uploads(request, limits)
        # decoding a 20 MB photo takes a while: in a worker thread, so the loop keeps answering
        return await anyio.to_thread.run_sync(
            lambda: [(u.name, predictor.crop(decode_upload(u, limits.max_pixels))) for u in uploads]
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/v1/predict", summary="class probabilities of one or more images (multipart field 'files')")
    async def predict(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        crops = await decoded(request)
        batcher: Batcher = request.app.state.batcher
        rows = await asyncio.gather(*(batcher.submit(crop) for _, crop in crops))
        metrics.images.inc(len(rows))
        return {
            "model": card["model"],
            "predictions": [
                {
                    "file": name,
                    "label": names[int(np.argmax(row))],
                    "probabilities": {c: float(p) for c, p in zip(names, row)},
                }
                for (name, _), row in zip(crops, rows)
            ],
            "time_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    @app.post(
        "/v1/explain",
        summary="Grad-CAM overlay (PNG) of one image for its predicted class or ?target=CLASS",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def explain(request: Request, target: str | None = None) -> Response:
        if cam_model is None:
            raise UploadError(501, "no-gradcam", "Grad-CAM needs a PyTorch checkpoint; this server runs an ONNX model")
        if target is not None and target not in names:
            raise UploadError(400, "unknown-class", f"target {target!r} is not one of the classes {names}")
        uploads = await read_uploads(request, limits)
        if len(uploads) != 1:
            raise UploadError(400, "one-image", f"explain takes one image, got {len(uploads)}")

        def run() -> tuple[np.ndarray, int, bytes]:
            image = decode_upload(uploads[0], limits.max_pixels)
            with cam_lock:
                probs, index, overlay = explain_image(cam_model, meta, image, target)
            return probs, index, _png(overlay)

        probs, index, png = await anyio.to_thread.run_sync(run)
        predicted = int(np.argmax(probs))
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Predicted-Class": quote(names[predicted]),
                "X-Probability": f"{probs[predicted]:.6f}",
                "X-Explained-Class": quote(names[index]),
            },
        )

    @app.get("/v1/model", summary="the model, its classes, preprocessing, metrics and checkpoint hash")
    async def model_info() -> dict[str, Any]:
        return card | {
            "serving": {"max_batch": batch_limit, "max_wait_ms": options.max_wait_ms, "batching": options.batching}
            | {"max_file_bytes": limits.max_file_bytes, "max_files": limits.max_files, "max_pixels": limits.max_pixels}
        }

    @app.get("/healthz", summary="the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and the batcher runs")
    async def readyz(request: Request) -> JSONResponse:
        if not request.app.state.ready:
            return _error(503, "not ready: starting or shutting down")
        batcher: Batcher = request.app.state.batcher
        if not batcher.alive:
            return _error(503, f"not ready: {batcher.stopped_message}")
        return JSONResponse({"status": "ready", "model": card["model"]})

    @app.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


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
