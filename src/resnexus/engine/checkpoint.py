"""Checkpoints: :class:`Checkpoint` loads any kind, and checkpoint files are written atomically.

A checkpoint file is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)``: model name and config, class names, preprocessing (image size,
mean, std, crop fraction), the weights, and for resuming the optimizer / scheduler state (what
last.pt adds is defined by :class:`resnexus.engine.fit.RunState`).

:meth:`Checkpoint.load` reads every kind that stands for one, so that evaluate, predict, explain,
export and serve accept the same paths: a ``.pt`` file; an ONNX file written by ``resnexus
export`` (its metadata holds the same keys; it runs on onnxruntime); the ``best.keras`` of a
Keras-trained run (its ``resnexus.json`` holds the same keys; the model is converted to its
PyTorch twin); a training run directory (its best checkpoint) and a cross-validation run
directory (its refit model, trained on every image), located by :class:`RunDir`; and with
``ensemble=True`` a cross-validation run's K fold models, as one model that averages their
probabilities. :meth:`Checkpoint.published` gives published ImageNet weights the same face.
Whatever the kind, ``.preprocessing`` speaks the vocabulary of published weights
(:class:`~resnexus.models.pretrained.Preprocessing`), whichever spelling the file used.

The functions below the class (``load_checkpoint``, ``load_for_inference``, ...) are the older
API, kept as thin wrappers over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..data import EvalPreprocess, eval_transform
from ..files import atomic_write
from ..models.pretrained import Preprocessing, cache_dir, imagenet_class_names, offline_dir
from ..models.registry import create_model, find_pretrained, is_weights_tag
from ..models.weights import WeightsError, load_torch_file
from ..reports.uncertainty import Calibration
from .onnx_model import OnnxClassifier
from .rundir import RunDir

logger = logging.getLogger(__name__)

FORMAT = "resnexus-checkpoint"
VERSION = 1
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
# The older names of parts of a run directory's layout, which RunDir owns (kept for code that imports them).
REFIT_DIR = RunDir.REFIT
BEST_FILES = {framework: RunDir(".").best(framework).name for framework in ("torch", "keras")}
CV_METRICS_FILE = RunDir.CV_METRICS


def fold_run_dir(run_dir: str | Path, fold: int) -> Path:
    """Where fold ``fold`` (1-based) of a cross-validation run trains (``RunDir(run_dir).fold(fold)``)."""
    return RunDir(run_dir).fold(fold).path


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


def eval_preprocess(source: Preprocessing | Mapping[str, Any] | Checkpoint) -> EvalPreprocess:
    """The evaluation transform of a checkpoint, its metadata or a :class:`Preprocessing`: resize,
    centre crop (per uint8 image, ``.sample``), then to float and normalise (per batch, ``.batch``).

    The one transform evaluate, predict, explain and serve apply, so their inputs are the same.
    """
    if isinstance(source, Checkpoint):
        source = source.preprocessing
    elif not isinstance(source, Preprocessing):
        source = Preprocessing.from_metadata(source)
    return eval_transform(source.image_size, source.mean, source.std, source.crop_fraction)


# what a Checkpoint was read from: a .pt file, a Keras run's .keras file, an exported .onnx file, a
# cross-validation run's fold models, or published weights
CheckpointKind = Literal["torch", "keras", "onnx", "ensemble", "published"]
# the spellings older files use for what is now model_config (the spec overrides the model was built with)
_MODEL_CONFIG_KEYS = ("model_config", "resnexus_config", "keras_model_config")


def _normalized(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the current key names filled in from older spellings (``input_size``,
    ``img_size``, ``crop_pct``, ``keras_model_config``, ...), so every reader sees one vocabulary."""
    meta = dict(meta)
    if "model_config" not in meta:
        meta["model_config"] = next((meta[k] for k in _MODEL_CONFIG_KEYS if isinstance(meta.get(k), dict)), {})
    if "mean" in meta and "std" in meta and ("image_size" not in meta or "crop_fraction" not in meta):
        meta.update(Preprocessing.from_metadata(meta).metadata())
    return meta


class Checkpoint:
    """A trained model with everything needed to use it: weights, class names, preprocessing.

    Open one with :meth:`load` (any path ``evaluate`` accepts) or :meth:`published`; then
    :meth:`model` gives the network in eval mode, :attr:`preprocessing` / :meth:`transforms` how to
    feed it, :attr:`class_names` what its outputs mean, :attr:`config` the training run's
    configuration (None where no run made it), :attr:`sha256` the file's digest.

    Attributes:
        path: The file read (for an ensemble: the cross-validation run directory).
        metadata: Everything the file holds but the weights, with current key names
            (``model_name``, ``class_names``, ``image_size``, ``mean``, ``std``, ...).
        kind: What it was read from: ``"torch"`` (.pt), ``"keras"``, ``"onnx"``, ``"ensemble"``
            or ``"published"``.
        members: An ensemble's fold checkpoints (empty otherwise).

    Example:
        ``Checkpoint.load("runs/photos-resnet50").model()``: the trained network, ready to predict.
    """

    def __init__(
        self,
        path: str | Path,
        metadata: Mapping[str, Any],
        build: Callable[[], nn.Module | OnnxClassifier] | None = None,
        *,
        kind: CheckpointKind,
        state_dict: dict[str, torch.Tensor] | None = None,
        members: list[Checkpoint] | None = None,
    ) -> None:
        self.path = Path(path)  # the file (an ensemble: the cross-validation run directory)
        self.metadata: dict[str, Any] = _normalized({k: v for k, v in metadata.items() if k != "state_dict"})
        self.kind = kind
        self.members = members or []  # an ensemble's fold checkpoints
        self._build = build
        self._state_dict = state_dict
        self._sha256: str | None = None

    def __repr__(self) -> str:
        return f"Checkpoint({self.kind}: {self.model_name}, {len(self.class_names)} classes, {self.path})"

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, ensemble: bool = False) -> Checkpoint:
        """Open a trained model from any path the commands accept.

        Args:
            path: A checkpoint (``.pt``), an ``.onnx`` file from ``resnexus export``, a Keras run's
                ``.keras`` file, a training run directory (its ``checkpoints/best.pt``) or a
                cross-validation run directory (its refit model); see :func:`resolve_checkpoint`.
            ensemble: ``path`` is a cross-validation run directory: load its K fold models as one
                model that averages their probabilities.

        Returns:
            The checkpoint; its weights are read now, the network is built by :meth:`model`.

        Raises:
            FileNotFoundError: ``path`` does not exist, or a run directory holds no model (the
                message says what to pass instead).
            ValueError: The file is not a resnexus checkpoint (:class:`WeightsError`: e.g. plain
                weights, which ``train --weights`` takes), not readable, or needs an optional extra
                (``onnx``, ``keras``); fold models that disagree on classes or preprocessing.
        """
        if ensemble:
            return cls._fold_ensemble(Path(path))
        file = resolve_checkpoint(path)
        suffix = file.suffix.lower()
        if suffix == ".onnx":
            runtime = OnnxClassifier(file)
            return cls(file, runtime.meta, lambda: runtime, kind="onnx")
        if suffix == ".keras":
            model, meta = _read_keras(file)
            return cls(file, meta, lambda: model, kind="keras")
        contents = load_torch_file(file)  # refused pickles and foreign files: a message naming the file
        if not isinstance(contents, dict) or contents.get("format") != FORMAT:
            raise WeightsError(
                f"{file}: not a resnexus checkpoint (no '{FORMAT}' marker); to start from plain weights "
                f"use `train --weights {file}`"
            )
        return cls(file, contents, kind="torch", state_dict=contents["state_dict"])

    @classmethod
    def published(cls, model_name: str, weights: str, weights_dir: str | Path | None = None) -> Checkpoint:
        """Published ImageNet weights used as they are, with nothing to train first.

        Args:
            model_name: A registered model name.
            weights: ``"imagenet"`` or a tag from ``resnexus models --weights``.
            weights_dir: A folder of downloaded weights files to use without network.

        Returns:
            A checkpoint with the 1,000 ImageNet classes and the source's own evaluation transform.

        Raises:
            ValueError: ``weights`` is not a published-weights name (a trained model is opened with
                :meth:`load`), or the model has no such weights.
            FileNotFoundError: The weights cannot be downloaded and are not in ``weights_dir``.
        """
        if not is_weights_tag(weights):
            raise ValueError(
                f"--weights {weights!r}: without --checkpoint, predict takes published weights by name "
                f"('imagenet' or a tag from `resnexus models --weights {model_name}`); a model you trained "
                "is given with --checkpoint"
            )
        entry = find_pretrained(model_name, weights)
        model = create_model(model_name, weights=entry, weights_dir=weights_dir).eval()
        meta = {"model_name": model_name, "model_config": {}, "num_classes": 1000, "in_chans": 3}
        meta |= {"class_names": imagenet_class_names(), **entry.preprocessing.metadata(), "weights": entry.tag}
        folder = offline_dir(weights_dir)  # where create_model found the file (verified there)
        dropped = folder / entry.file_name if folder is not None else None
        path = dropped if dropped is not None and dropped.is_file() else cache_dir() / entry.file_name
        return cls(path, meta, lambda: model, kind="published")

    @classmethod
    def _fold_ensemble(cls, run_dir: Path) -> Checkpoint:
        members = [cls.load(p) for p in fold_checkpoints(run_dir)]
        first = members[0]
        for member in members[1:]:
            differing = [k for k in _ENSEMBLE_MUST_AGREE if member.metadata.get(k) != first.metadata.get(k)]
            if differing:
                raise ValueError(
                    f"{member.path} differs from {first.path} in {differing}: its probabilities cannot be averaged"
                )
        meta = first.inference_metadata() | {
            "model_name": f"{len(members)}-fold ensemble of {first.model_name}",
            "ensemble_members": [str(m.path) for m in members],
        }
        logger.info(f"{run_dir}: ensemble of {len(members)} fold models")
        return cls(
            run_dir, meta, lambda: FoldEnsemble([m.model() for m in members]).eval(), kind="ensemble", members=members
        )

    # -- what it holds ---------------------------------------------------------------------------
    def model(self) -> nn.Module | OnnxClassifier:
        """The network in eval mode, on the CPU (a .pt checkpoint builds a fresh one on each call; an
        ``.onnx`` file gives an :class:`OnnxClassifier`, which takes and returns tensors the same way)."""
        return self._build() if self._build is not None else self._torch_model()

    def _torch_model(self) -> nn.Module:
        return model_from_checkpoint(self.metadata | {"state_dict": self.state_dict})

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a PyTorch state dict (a Keras model's: those of its PyTorch twin)."""
        if self._state_dict is None:
            model = self.model()
            if not isinstance(model, nn.Module):
                raise WeightsError(f"{self.path}: an ONNX model holds no PyTorch weights; use its .pt checkpoint")
            self._state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return self._state_dict

    @property
    def preprocessing(self) -> Preprocessing:
        """Image size, mean, std and crop fraction the model expects."""
        return Preprocessing.from_metadata(self.metadata)

    def transforms(self) -> EvalPreprocess:
        """The evaluation transform (:func:`eval_preprocess`): ``.sample(image)`` resizes and crops one
        uint8 ``(C, H, W)`` tensor, ``.batch(images)`` makes a uint8 batch the model's float input."""
        return eval_preprocess(self.preprocessing)

    @property
    def class_names(self) -> list[str]:
        """What the model's outputs mean, in output order."""
        return list(self.metadata["class_names"])

    @property
    def model_name(self) -> str:
        """The registry name of the architecture (``create_model(model_name, ...)``)."""
        return str(self.metadata["model_name"])

    @property
    def model_config(self) -> dict[str, Any]:
        """The spec overrides the model was built with (``create_model(name, **model_config)``)."""
        return dict(self.metadata.get("model_config") or {})

    @property
    def in_chans(self) -> int:
        """Input channels."""
        return int(self.metadata.get("in_chans", 3))

    @property
    def config(self) -> dict[str, Any] | None:
        """The training run's configuration (``TrainConfig`` fields), or None (published weights, exports)."""
        return self.metadata.get("config")

    @property
    def positive_class(self) -> str | None:
        """The class that sensitivity is about (two classes), as the run chose it; None: the default rule."""
        return self.metadata.get("positive_class")

    @property
    def run_dir(self) -> RunDir | None:
        """The run directory the file was saved in, or None for a file elsewhere."""
        return RunDir(self.path) if self.kind == "ensemble" else RunDir.holding(self.path)

    @property
    def calibration(self) -> Calibration | None:
        """What cross-validation learned about trusting this model (reports/uncertainty.py): for the
        refit model or the fold ensemble of a ``train --folds K`` run, its calibration.json; else None."""
        run = self.run_dir
        if run is None:
            return None
        study = run if self.kind == "ensemble" else RunDir(run.path.parent) if run.path.name == RunDir.REFIT else None
        if study is None or not study.calibration.is_file():
            return None
        return Calibration.load(study.calibration)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file (an ensemble: of its members' digests, in fold order)."""
        if self._sha256 is None:
            hasher = hashlib.sha256()
            if self.members:
                for member in self.members:
                    hasher.update(member.sha256.encode())
            else:
                with self.path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        hasher.update(chunk)
            self._sha256 = hasher.hexdigest()
        return self._sha256

    def inference_metadata(self) -> dict[str, Any]:
        """The keys inference reads (:data:`INFERENCE_KEYS`), as an exported model carries them."""
        return {k: self.metadata.get(k) for k in INFERENCE_KEYS}

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint dict the older API returns: the metadata and ``state_dict``."""
        return self.metadata | {"state_dict": self.state_dict}


def _read_keras(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the PyTorch model, metadata) of a ``.keras`` file that resnexus wrote with its metadata inside
    (a Keras-trained run's best.keras), converted with :func:`resnexus.keras.to_torch`. Needs the
    ``keras`` extra."""
    try:
        from ..keras_backend import use_backend_for_reading

        use_backend_for_reading(path)  # before Keras is imported: any installed backend reads the file
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
    meta = _normalized(meta)
    return to_torch(keras_model, **meta["model_config"]).eval(), meta


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


# -- finding the checkpoint a path stands for --------------------------------------------------------
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
    run = RunDir(path)
    for candidate in (run.refit.saved_best(), run.saved_best()):
        if candidate is not None:
            logger.info(f"{path}: using {candidate}")
            return candidate
    refit = run.refit.best()
    if run.cv_metrics.is_file():
        raise FileNotFoundError(
            f"{path} is a cross-validation run without a refit model ({refit} does not exist: it was run "
            "with --no-refit, or the refit did not finish); pass --ensemble to use its fold models, "
            "or train the refit model with `train --folds K` without --no-refit"
        )
    raise FileNotFoundError(
        f"{path} is neither a cross-validation run with a refit model ({refit}) nor a training run "
        f"({run.best()}, or {run.best('keras').name} for a Keras-trained run); pass a checkpoint file, "
        "an .onnx file or a run directory"
    )


def fold_checkpoints(run_dir: str | Path) -> list[Path]:
    """The best.pt (or a Keras run's best.keras) of every fold of a finished cross-validation run, in fold order."""
    run = RunDir(run_dir)
    if not run.cv_metrics.is_file():
        raise FileNotFoundError(
            f"--ensemble needs a finished cross-validation run directory (`train --folds K`); "
            f"{run.path} has no {run.cv_metrics.name}"
        )
    folds = int(json.loads(run.cv_metrics.read_text(encoding="utf-8"))["protocol"]["folds"])
    paths = [run.fold(k).saved_best() or run.fold(k).best() for k in range(1, folds + 1)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run.path}: fold checkpoint(s) missing: {', '.join(missing)}")
    return paths


# what RunState (engine/fit.py) saves into last.pt besides the weights, and resuming restores
RESUME_KEYS = ("model_state", "optimizer", "scheduler", "scaler", "history", "best_score", "best_epoch", "epoch")


def read_resume_state(path: str | Path) -> dict[str, Any]:
    """A PyTorch run's ``last.pt`` for ``--resume``: tensors and plain containers only, on the CPU.

    Raises:
        WeightsError: ``path`` is not a resnexus ``last.pt`` (another file, a ``best.pt``, plain weights).
    """
    contents = load_torch_file(path)  # a foreign or unsafe file: refused with a message naming it
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a resnexus last.pt (no '{FORMAT}' marker); --resume continues a run's own")
    if missing := [key for key in RESUME_KEYS if key not in contents]:
        raise WeightsError(
            f"{path}: not a resumable last.pt, it lacks {', '.join(missing)} (a best.pt holds weights only); "
            "--resume needs the last.pt that training saved"
        )
    return contents


# -- the older API: thin wrappers over Checkpoint ----------------------------------------------------
def best_checkpoint(run_dir: Path) -> Path | None:
    """A training run's selected model (``RunDir(run_dir).saved_best()``): best.pt, else best.keras, else None."""
    return RunDir(run_dir).saved_best()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as a dict (``Checkpoint.load(path).as_dict()``); a ``.keras`` file of a
    Keras-trained run reads as the same dict, with the weights of its PyTorch twin."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return Checkpoint.load(path).as_dict()


def load_keras_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the PyTorch model, metadata) of a Keras-trained run's ``.keras`` file (see :meth:`Checkpoint.load`)."""
    return _read_keras(Path(path))


def model_from_checkpoint(ckpt: dict[str, Any] | Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint dict describes and load its weights (eval mode)."""
    if isinstance(ckpt, Checkpoint):
        return ckpt.model()
    meta = _normalized(ckpt)
    model = create_model(
        meta["model_name"], num_classes=meta["num_classes"], in_chans=meta.get("in_chans", 3), **meta["model_config"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_published(
    model_name: str, weights: str, weights_dir: str | Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) of published ImageNet weights (:meth:`Checkpoint.published`)."""
    checkpoint = Checkpoint.published(model_name, weights, weights_dir)
    return checkpoint.model(), checkpoint.metadata


def load_fold_ensemble(run_dir: str | Path) -> tuple[FoldEnsemble, dict[str, Any]]:
    """(a cross-validation run's fold models as one :class:`FoldEnsemble`, metadata)."""
    checkpoint = Checkpoint.load(run_dir, ensemble=True)
    return checkpoint.model(), checkpoint.metadata


def load_for_inference(path: str | Path, ensemble: bool = False) -> tuple[nn.Module | OnnxClassifier, dict[str, Any]]:
    """(model, metadata) of any path :meth:`Checkpoint.load` accepts."""
    checkpoint = Checkpoint.load(path, ensemble=ensemble)
    return checkpoint.model(), checkpoint.metadata
