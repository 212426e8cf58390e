"""Checkpoints that carry everything ``evaluate`` and ``predict`` need, written atomically.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)``: model name and config, class names, preprocessing (image size,
mean, std, crop fraction), the weights, and for resuming the optimizer / scheduler state (what
last.pt adds is defined by :class:`resnexus.engine.fit.RunState`).

An ONNX file written by ``resnexus export`` stands in for a checkpoint at inference time: it
carries the same metadata, and :func:`load_for_inference` opens either kind. So does the
``best.keras`` of a Keras-trained run (its ``resnexus.json`` holds the same metadata): it is
converted to its PyTorch twin (:func:`load_keras_checkpoint`), and :func:`load_checkpoint` reads it
as a checkpoint dict.

A run directory stands in for a checkpoint too (:func:`resolve_checkpoint`, used by evaluate,
predict, explain and export): a cross-validation run's refit model (``RUN_DIR/refit``, trained on
every image), else a training run's ``checkpoints/best.pt``. :func:`load_fold_ensemble` opens a
cross-validation run's K fold models as one model that averages their probabilities.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write
from ..models.pretrained import imagenet_class_names
from ..models.registry import create_model, find_pretrained, is_weights_tag
from ..models.weights import WeightsError, load_torch_file

logger = logging.getLogger(__name__)

FORMAT = "resnexus-checkpoint"
VERSION = 1
ONNX_META_KEY = "resnexus"  # the ONNX metadata entry holding a checkpoint's inference keys (JSON)
# what inference needs from a checkpoint, and what an exported ONNX file therefore carries
INFERENCE_KEYS = (
    "model_name",
    "model_config",
    "num_classes",
    "in_chans",
    "class_names",
    "image_size",
    "mean",
    "std",
    "crop_fraction",
    "positive_class",
)
# The layout of a cross-validation run directory (engine/crossval.py writes it; inference reads it).
REFIT_DIR = "refit"  # the deployable model: the same recipe trained on every image
BEST_FILES = {"torch": "best.pt", "keras": "best.keras"}  # a run's selected model, by the framework that trained it
CV_METRICS_FILE = "cv_metrics.json"  # written once every fold has been trained and tested


def fold_run_dir(run_dir: str | Path, fold: int) -> Path:
    """Where fold ``fold`` (1-based) of a cross-validation run trains: an ordinary run directory."""
    return Path(run_dir) / f"fold{fold}"


def plain(value: Any) -> Any:
    """Tuples, paths and dataclass-like leftovers turned into types ``weights_only`` accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """``torch.save`` that never leaves half a checkpoint: a crash leaves the previous file or the new one."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    model_config: dict[str, Any],
    class_names: list[str],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_fraction: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    in_chans = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0])
    return checkpoint_metadata(
        model_name=model_name,
        model_config=model_config,
        class_names=class_names,
        image_size=image_size,
        mean=mean,
        std=std,
        crop_fraction=crop_fraction,
        in_chans=in_chans,
        extra=extra,
    ) | {"state_dict": state}


def checkpoint_metadata(
    *,
    model_name: str,
    model_config: dict[str, Any],
    class_names: list[str],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_fraction: float,
    in_chans: int = 3,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds but the weights (plain types): what a ``.keras`` file of a
    Keras-trained run carries in its ``resnexus.json`` too, so both load into the same metadata."""
    return plain(
        {
            "format": FORMAT,
            "version": VERSION,
            "model_name": model_name,
            "model_config": model_config,
            "num_classes": len(class_names),
            "in_chans": in_chans,
            "class_names": list(class_names),
            "image_size": image_size,
            "mean": list(mean),
            "std": list(std),
            "crop_fraction": crop_fraction,
            **(extra or {}),
        }
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a resnexus checkpoint (``weights_only=True``); a foreign file gets a clear error.

    A ``.keras`` file of a Keras-trained run (``train --framework keras``) reads as the same dict:
    its metadata, and the weights of its PyTorch twin (:func:`load_keras_checkpoint`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".keras":
        model, ckpt = load_keras_checkpoint(path)
        return ckpt | {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    ckpt = load_torch_file(path)  # refused pickles and foreign files: a message naming the file
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: not a resnexus checkpoint (no '{FORMAT}' marker); to start from plain weights "
            f"use `train --weights {path}`"
        )
    return ckpt


def load_keras_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the PyTorch model, inference metadata) of a ``.keras`` file that resnexus wrote with its
    metadata inside (a Keras-trained run's best.keras): converted with
    :func:`resnexus.keras.to_torch`, so evaluate, predict, explain, export and serve run it as they
    run a PyTorch checkpoint. Needs the ``keras`` extra."""
    path = Path(path)
    try:
        from ..keras import to_torch
        from ..keras.files import load_keras
    except ImportError as error:
        raise ValueError(f"{path} is a Keras model: reading it needs Keras, pip install 'resnexus[keras]'") from error
    keras_model, meta = load_keras(path)
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: a .keras file without resnexus metadata (class names, preprocessing); "
            "a Keras-trained run's checkpoints/best.keras has it"
        )
    torch_model = to_torch(keras_model, **meta.get("model_config", {}))
    return torch_model.eval(), meta


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = create_model(
        ckpt["model_name"], num_classes=ckpt["num_classes"], in_chans=ckpt.get("in_chans", 3), **ckpt["model_config"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_published(
    model_name: str, weights: str, weights_dir: str | Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, inference metadata) for published ImageNet weights used as they are: the 1,000
    ImageNet classes and the source's own evaluation transform; nothing to train first."""
    if not is_weights_tag(weights):
        raise ValueError(
            f"--weights {weights!r}: without --checkpoint, predict takes published weights by name "
            f"('imagenet' or a tag from `resnexus models --weights {model_name}`); a model you trained "
            "is given with --checkpoint"
        )
    entry = find_pretrained(model_name, weights)
    model = create_model(model_name, weights=entry, weights_dir=weights_dir).eval()
    prep = entry.preprocessing
    meta = {
        "model_name": model_name,
        "model_config": {},
        "num_classes": 1000,
        "in_chans": 3,
        "class_names": imagenet_class_names(),
        "image_size": prep.input_size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "crop_fraction": prep.crop_fraction,
        "weights": entry.tag,
    }
    return model, meta


def require_onnx_package(module: str) -> Any:
    """Import one of the optional ONNX packages, or say how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"ONNX export needs {module}: pip install 'resnexus[onnx]'") from error


class OnnxClassifier:
    """An onnxruntime session that behaves like an eval-mode model: tensor in, logits tensor out."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = require_onnx_package("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for broken files
            raise ValueError(f"{self.path}: not a readable ONNX model ({error})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_META_KEY not in props:
            raise ValueError(f"{self.path}: no resnexus metadata; export it with `resnexus export`")
        self.meta: dict[str, Any] = json.loads(props[ONNX_META_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def eval(self) -> OnnxClassifier:  # the inference helpers call model.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxClassifier:
        return self


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file a path stands for, so every command accepts a run directory.

    A file is returned as given (a checkpoint or an .onnx file). A cross-validation run directory
    gives its refit model, ``refit/checkpoints/best.pt``; a training run directory its
    ``checkpoints/best.pt``, or ``checkpoints/best.keras`` for a Keras-trained run. Anything else
    is refused with the reason and what to pass instead.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    refit = path / REFIT_DIR / "checkpoints" / "best.pt"
    best = path / "checkpoints" / "best.pt"
    for candidate in (best_checkpoint(path / REFIT_DIR), best_checkpoint(path)):
        if candidate is not None:
            logger.info(f"{path}: using {candidate}")
            return candidate
    if (path / CV_METRICS_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is a cross-validation run without a refit model ({refit} does not exist: it was run "
            "with --no-refit, or the refit did not finish); pass --ensemble to use its fold models, "
            "or train the refit model with `train --folds K` without --no-refit"
        )
    raise FileNotFoundError(
        f"{path} is neither a cross-validation run with a refit model ({refit}) nor a training run "
        f"({best}, or best.keras for a Keras-trained run); pass a checkpoint file, an .onnx file or a run directory"
    )


def best_checkpoint(run_dir: Path) -> Path | None:
    """A training run's selected model: ``checkpoints/best.pt``, or ``best.keras`` for a Keras run; None if neither."""
    for name in BEST_FILES.values():
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    return None


def fold_checkpoints(run_dir: str | Path) -> list[Path]:
    """The best.pt (or a Keras run's best.keras) of every fold of a finished cross-validation run, in fold order."""
    run_dir = Path(run_dir)
    record = run_dir / CV_METRICS_FILE
    if not record.is_file():
        raise FileNotFoundError(
            f"--ensemble needs a finished cross-validation run directory (`train --folds K`); "
            f"{run_dir} has no {CV_METRICS_FILE}"
        )
    folds = int(json.loads(record.read_text(encoding="utf-8"))["protocol"]["folds"])
    found = [best_checkpoint(fold_run_dir(run_dir, k)) for k in range(1, folds + 1)]
    paths = [p or fold_run_dir(run_dir, k) / "checkpoints" / "best.pt" for k, p in enumerate(found, start=1)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: fold checkpoint(s) missing: {', '.join(missing)}")
    return paths


class FoldEnsemble(nn.Module):
    """Several models as one whose class probabilities are the mean of theirs.

    ``forward`` returns the log of the mean probability, a valid set of logits: the softmax that
    every inference path applies gives that mean back (to float rounding), so ``predict``,
    ``evaluate`` and flip TTA need no ensemble-specific code.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images).float().softmax(1) for m in self.members]).mean(0).log()


# what must agree between fold models for their probabilities to be averaged
_ENSEMBLE_MUST_AGREE = ("class_names", "image_size", "mean", "std", "crop_fraction", "in_chans")


def load_fold_ensemble(run_dir: str | Path) -> tuple[FoldEnsemble, dict[str, Any]]:
    """(the K fold models of a cross-validation run as a :class:`FoldEnsemble`, inference metadata)."""
    paths = fold_checkpoints(run_dir)
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0]
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        differing = [k for k in _ENSEMBLE_MUST_AGREE if ckpt.get(k) != first.get(k)]
        if differing:
            raise ValueError(f"{path} differs from {paths[0]} in {differing}: its probabilities cannot be averaged")
    meta = {k: first.get(k) for k in INFERENCE_KEYS} | {
        "model_name": f"{len(paths)}-fold ensemble of {first['model_name']}"
    }
    meta["ensemble_members"] = [str(p) for p in paths]
    logger.info(f"{run_dir}: ensemble of {len(paths)} fold models")
    return FoldEnsemble([model_from_checkpoint(c) for c in checkpoints]).eval(), meta


def load_for_inference(path: str | Path, ensemble: bool = False) -> tuple[nn.Module | OnnxClassifier, dict[str, Any]]:
    """(model, inference metadata) from a checkpoint, an exported .onnx file or a run directory
    (:func:`resolve_checkpoint`); ``ensemble``: a cross-validation run's fold models."""
    if ensemble:
        return load_fold_ensemble(path)
    path = resolve_checkpoint(path)
    if Path(path).suffix.lower() == ".onnx":
        runtime = OnnxClassifier(path)
        return runtime, runtime.meta
    if Path(path).suffix.lower() == ".keras":
        return load_keras_checkpoint(path)
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
