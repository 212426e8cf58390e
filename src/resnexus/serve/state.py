"""The server's state: the loaded model, its class names and preprocessing, the model card, the
batcher and the Prometheus metrics, made once by ``create_app`` and reached by the routes through
``Depends(server_state)``.

:func:`load_model` is the one place the server loads a checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request

from ..engine.checkpoint import Checkpoint
from ..engine.inference import Predictor
from ..engine.rundir import RunDir
from ..reports.uncertainty import Calibration, Judged, judge
from .batching import Batcher
from .options import DEFAULT_COVERAGE, ServeOptions
from .schemas import CalibrationCard, ModelCard, ModelInfo, Serving

NOT_A_DIAGNOSIS = "not a diagnosis; for research use"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def load_model(checkpoint: str | Path) -> Checkpoint:
    """Load ``checkpoint`` (a checkpoint file, a run / CV directory or an .onnx file): the one place
    the server reads a checkpoint, so a change of loader is a change here only."""
    return Checkpoint.load(checkpoint)


class ServerMetrics:
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


@dataclass
class ServerState:
    """What the routes share. ``batcher`` runs, and ``ready`` is True, between :meth:`start` and
    :meth:`stop` (the app's lifespan)."""

    options: ServeOptions
    checkpoint: Path  # the file loaded (the log may name it; responses do not)
    meta: dict[str, Any]
    predictor: Predictor
    cam_model: torch.nn.Module | None  # Grad-CAM's own copy of a PyTorch model; None for ONNX
    card: ModelCard
    calibration: Calibration | None = None  # applied to every prediction (None: raw probabilities)
    coverage: float | None = None  # the sets' coverage when a request asks for none (None: no sets)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    cam_lock: threading.Lock = field(default_factory=threading.Lock)  # captum hooks the model: one at a time
    batcher: Batcher | None = None
    ready: bool = False

    @classmethod
    def load(cls, checkpoint: str | Path, options: ServeOptions) -> ServerState:
        """The state of a server for ``checkpoint``: the model is loaded here."""
        loaded = load_model(checkpoint)
        model = loaded.model()
        calibration, coverage = served_calibration(loaded, options)
        return cls(
            options=options,
            checkpoint=loaded.path,
            meta=loaded.metadata,
            predictor=Predictor(model, loaded.metadata),
            cam_model=copy.deepcopy(model) if isinstance(model, torch.nn.Module) else None,
            card=model_card(checkpoint, loaded, calibration, coverage),
            calibration=calibration,
            coverage=coverage,
        )

    @property
    def class_names(self) -> list[str]:
        return self.card.classes

    def judge(self, probs: np.ndarray, coverage: float | None = None) -> Judged:
        """What the server answers for raw probability rows: :func:`judge` with the server's
        calibration, and sets at ``coverage`` (None: the server's; without a calibration, none)."""
        return judge(probs, self.calibration, self.coverage if coverage is None else coverage)

    def start(self) -> None:
        """Start the batcher and report ready."""
        self.batcher = Batcher(
            self.predictor.probabilities,
            self.options.batch_limit,
            self.options.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
        )
        self.ready = True

    def stop(self) -> None:
        """Report not ready, then let the batcher answer what is queued and stop."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()

    def model_info(self) -> ModelInfo:
        """``GET /v1/model``: the model card and the serving options."""
        options, limits = self.options, self.options.limits
        serving = Serving(
            max_batch=options.batch_limit,
            max_wait_ms=options.max_wait_ms,
            batching=options.batching,
            max_file_bytes=limits.max_file_bytes,
            max_files=limits.max_files,
            max_pixels=limits.max_pixels,
        )
        return ModelInfo(**dict(self.card), serving=serving)


def server_state(request: Request) -> ServerState:
    """The state of the app answering ``request`` (the routes' ``Depends``)."""
    return request.app.state.server


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _base_name(path: str | None) -> str | None:
    """The last part of a file or folder path, written with / or \\ (a run trained on Windows)."""
    return (PureWindowsPath(path).name or None) if path else None


def served_calibration(checkpoint: Checkpoint, options: ServeOptions) -> tuple[Calibration | None, float | None]:
    """(the calibration the server applies, its sets' coverage): the run's calibration.json unless
    ``--no-calibration``, at ``--coverage`` or :data:`DEFAULT_COVERAGE`. A coverage asked of a model
    without one, or a calibration of other classes, is refused before the server starts."""
    calibration = checkpoint.calibration if options.calibrated else None
    if calibration is None:
        if options.coverage is not None:  # judge's own refusal, naming the model and the remedy
            judge(np.empty((0, len(checkpoint.class_names))), None, options.coverage, source=str(checkpoint.path))
        return None, None
    if calibration.class_names != checkpoint.class_names:
        raise ValueError(
            f"{checkpoint.path}: its calibration is for the classes {calibration.class_names}, the model has "
            f"{checkpoint.class_names}; serve it with --no-calibration or calibrate it again"
        )
    return calibration, DEFAULT_COVERAGE if options.coverage is None else options.coverage


def _interval(value: Any) -> list[float] | None:
    """``[low, high]`` when ``value`` is two finite numbers, else None (an absent or malformed interval)."""
    numbers = isinstance(value, (list, tuple)) and len(value) == 2
    if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return [value[0], value[1]]
    return None


def _cv_accuracy(source: str | Path, run: RunDir | None) -> dict[str, Any] | None:
    """The cross-validated accuracy when the model is a CV run's refit model (or ``source`` is a CV
    directory), from its cv_metrics.json, with its standard error and, where the file has one
    (``ci: {accuracy: [low, high]}`` or ``mean: {accuracy_ci: ...}``), its 95 % interval; else None."""
    cv = RunDir(run.path.parent) if run is not None and run.path.name == RunDir.REFIT else None
    if cv is None and Path(source).is_dir() and RunDir(source).cv_metrics.is_file():
        cv = RunDir(source)
    record = _read_json(cv.cv_metrics) if cv is not None else None
    if not isinstance(record, dict):
        return None
    mean, std = record.get("mean") or {}, record.get("std") or {}
    if "accuracy" not in mean:
        return None
    folds, spread = (record.get("protocol") or {}).get("folds"), std.get("accuracy")
    se = (
        spread / math.sqrt(folds) if isinstance(spread, (int, float)) and isinstance(folds, int) and folds > 0 else None
    )
    ci = record.get("ci") if isinstance(record.get("ci"), dict) else {}
    return {
        "mean": mean["accuracy"],
        "std": spread,
        "folds": folds,
        "se": se,
        "ci": _interval(ci.get("accuracy", mean.get("accuracy_ci"))),
    }


def _calibration_card(calibration: Calibration | None, coverage: float | None) -> CalibrationCard | None:
    if calibration is None or coverage is None:
        return None
    point = None
    if calibration.threshold is not None and calibration.positive_class is not None:
        point = {
            "positive_class": calibration.positive_class,
            "threshold": calibration.threshold,
            "target": calibration.target,
        }
    return CalibrationCard(
        temperature=calibration.temperature,
        coverage=coverage,
        images=len(calibration.scores),
        operating_point=point,
        before=calibration.before,
        after=calibration.after,
    )


def model_card(
    source: str | Path, checkpoint: Checkpoint, calibration: Calibration | None = None, coverage: float | None = None
) -> ModelCard:
    """What ``GET /v1/model`` says: the model, its classes and preprocessing, the run's metrics and
    cross-validated accuracy when the checkpoint came from a run / CV directory, the calibration
    served (``calibration`` at ``coverage``), the file's hash.

    No server path: the checkpoint and the training data are named by their file / folder name only
    (the API has no authentication, and where the server keeps its files is nobody's business)."""
    resolved, meta = checkpoint.path, checkpoint.metadata
    run = RunDir.holding(resolved)
    config = meta.get("config") or {}
    return ModelCard(
        model=meta["model_name"],
        classes=list(meta["class_names"]),
        preprocessing={
            "image_size": meta["image_size"],
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "crop_fraction": meta["crop_fraction"],
        },
        checkpoint=resolved.name,
        sha256=checkpoint.sha256,
        runtime="onnxruntime" if resolved.suffix.lower() == ".onnx" else "pytorch",
        trained_on={
            "data": _base_name(config.get("data")),
            "images": meta.get("split_sizes"),
            "which": meta.get("trained_on"),
        },
        metrics=_read_json(run.metrics) if run is not None else None,
        cv_accuracy=_cv_accuracy(source, run),
        calibration=_calibration_card(calibration, coverage),
        notice=NOT_A_DIAGNOSIS,
    )
