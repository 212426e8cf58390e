"""Evaluate a checkpoint on labelled data, or predict a folder of images into a CSV file.

Both start from a checkpoint alone: it carries the model, the class names and the preprocessing.
An exported ``.onnx`` file (``resnexus export``) works in its place and runs on onnxruntime, and so
does a run directory (a cross-validation run's refit model): :meth:`Checkpoint.load` opens them all.
``ensemble=True`` uses a cross-validation run's K fold models: the mean of their probabilities.
:func:`predict_loader` is also how training validates and tests, so both measure the same way.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import (
    BadImage,
    DataError,
    ImageDataset,
    ImageFileError,
    UnlabeledDataset,
    collate_readable,
    scan_dataset,
    scan_unlabeled,
)
from ..files import atomic_write, check_writable_folder, write_text_atomic
from ..reports import classification_metrics, resolve_positive_class
from ..reports.uncertainty import Calibration, Judged, calibration_summary, judge
from .checkpoint import Checkpoint, FoldEnsemble, eval_preprocess

logger = logging.getLogger(__name__)


def class_probabilities(model: nn.Module, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """Softmax of the logits in fp32; with ``flip_tta`` the mean over the image and its mirror."""
    probs = model(images).float().softmax(1)
    if flip_tta:
        probs = 0.5 * (probs + model(images.flip(-1)).float().softmax(1))
    return probs


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    autocast: Callable[[], Any] = nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
    flip_tta: bool = False,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, class probabilities and mean cross-entropy over a whole loader (eval mode).

    ``preprocess`` turns each batch into model input on the device (``EvalPreprocess.batch``
    when the loader gives uint8 crops). Training validates with it too, so a checkpoint's
    ``evaluate`` metrics are computed exactly as its validation scores were.
    """
    model.eval()
    labels_all, probs_all, loss_sum = [], [], torch.zeros((), device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if preprocess is not None:
            images = preprocess(images)
        images = images.contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            probs = class_probabilities(model, images, flip_tta)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
        labels_all.append(labels.cpu())
        probs_all.append(probs.cpu())
    if not labels_all:  # no batch at all (every image skipped as unreadable)
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), 0.0
    y = torch.cat(labels_all).numpy()
    return y, torch.cat(probs_all).numpy(), loss_sum.item() / max(1, len(y))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def optimize_for_inference(model: Any, device: torch.device) -> tuple[Any, torch.memory_format]:
    """The model ready for inference on ``device``, and the memory layout to give it inputs in.

    Each BatchNorm that follows a convolution is folded into that convolution's weights
    (torch.fx's conv-BN fusion; outputs equal to ~1e-7), which removes a pass over every feature
    map, and CPUs get channels_last, oneDNN's preferred layout: resnext50_32x4d at batch 16 runs
    1.4x faster on 2 cores. Models torch.fx cannot trace (DenseNet and FractalNet, whose
    BatchNorms come before their convolutions and could not be folded anyway) and ONNX models
    are returned as they are.
    """
    if not isinstance(model, torch.nn.Module):
        return model, torch.contiguous_format
    model = model.to(device).eval()
    if isinstance(model, FoldEnsemble):  # each member on its own: one untraceable member spoils no other
        model.members = nn.ModuleList([_fused(member) for member in model.members])
    else:
        model = _fused(model)
    if device.type == "cpu":
        return model.to(memory_format=torch.channels_last), torch.channels_last
    return model, torch.contiguous_format


def _fused(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorms folded into the preceding convolutions, when torch.fx can trace it."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # not traceable by torch.fx: keep the model unfused
        return model


def check_output_file(
    path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False, flag: str = "--output"
) -> Path:
    """Refuse an output file that would destroy something or cannot be written, before any work.

    Never one of ``inputs`` (an image being read, the checkpoint), even with ``overwrite``: a
    predictions file written over the photo it describes is lost data. An existing file is kept
    unless ``overwrite``; a folder, or a parent that is a file or not writable, is one clear line.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give the name of a file to write")
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise ValueError(f"{flag} {path} is one of the command's inputs; refusing to overwrite it")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{flag} {path} already exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, path)
    return path


def checkpoint_files(checkpoint: str | Path) -> list[Path]:
    """The model files a ``--checkpoint`` argument stands for: the file, or those in a run directory.

    An output must never replace them, not even with ``--overwrite``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        return [p for p in path.rglob("*") if p.suffix in (".pt", ".onnx", ".keras") and p.is_file()]
    return [path]


def submission_ids(paths: Sequence[Path], root: str | Path) -> list[str]:
    """One unique id per image for ``predict --id-label``: the file stem when stems are unique.

    Otherwise (``cats/img_0.png`` and ``dogs/img_0.png``) every id is the path relative to the
    input folder, as ``/``-separated text, without its extension, or with it where that is still
    ambiguous (``a.png`` beside ``a.jpg``): a submission with a repeated id scores the wrong row.
    """
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(root)
    base = root if root.is_dir() else root.parent
    relative = [Path(os.path.relpath(p, base)).as_posix() for p in paths]
    ids = [r[: -len(Path(r).suffix)] if Path(r).suffix else r for r in relative]
    if len(set(ids)) != len(ids):
        ids = relative
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"--id-label: the input holds the same image path twice ({', '.join(repeated[:5])})")
    logger.warning(f"file names repeat under {root}: ids are paths relative to it (e.g. {ids[0]})")
    return ids


@contextmanager
def suggest_skipping(command: str) -> Iterator[None]:
    """An image that cannot be decoded stops ``command`` with one line naming it and the way on."""
    try:
        yield
    except ImageFileError as error:
        raise DataError(f"{error}; pass --skip-bad-images to {command} the other images") from None


def readable_batches(loader: DataLoader, skipped: list[BadImage]) -> Iterator[Any]:
    """The batches of a ``collate_readable`` loader without its unreadable images, which are
    appended to ``skipped``."""
    for batch, bad in loader:
        skipped.extend(bad)
        if batch is not None:
            yield batch


def log_skipped(skipped: Sequence[BadImage], how: str) -> None:
    """One warning line per image left out by ``--skip-bad-images``, after a count saying ``how``."""
    if skipped:
        logger.warning(f"skipped {len(skipped)} unreadable image(s), {how}:")
        for bad in skipped:
            logger.warning(f"  {bad.error.path}: {bad.error.detail}")


def _none_readable(skipped: Sequence[BadImage], source: str | Path) -> DataError:
    return DataError(f"none of the {len(skipped)} image(s) in {source} can be decoded (all skipped)")


def calibration_for(
    loaded: Checkpoint, calibrated: bool, coverage: float | None, per_class: bool, source: str | Path
) -> Calibration | None:
    """The calibration predict / evaluate apply (None: none stored, or ``calibrated=False``), with the
    coverage options checked before any image is read: :func:`judge` refuses what it cannot do."""
    if per_class and coverage is None:
        raise ValueError("--per-class-coverage goes with --coverage (it makes one set threshold per class)")
    if coverage is not None and not calibrated:
        raise ValueError("--coverage needs the model's calibration: drop --no-calibration")
    calibration = loaded.calibration if calibrated else None
    n = len(loaded.class_names)
    judge(np.full((1, n), 1.0 / n), calibration, coverage, per_class, source=str(source))
    return calibration


def set_coverage(judged: Judged, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """How often ``judged``'s sets hold the true class (overall and per class) and their mean size."""
    assert judged.sets is not None
    inside = judged.sets[np.arange(len(labels)), labels]
    return {
        "coverage_target": judged.coverage,
        "coverage": float(inside.mean()),
        "mean_set_size": float(judged.sets.sum(axis=1).mean()),
        "coverage_per_class": {
            name: float(inside[labels == k].mean()) for k, name in enumerate(class_names) if (labels == k).any()
        },
    }


def _judged_metrics(
    y_true: np.ndarray, judged: Judged, names: list[str], positive_class: str | None, per_class: bool
) -> dict[str, Any]:
    """classification_metrics of what a user is shown (calibrated probabilities, the threshold's
    labels), with their calibration scores and, with a coverage, the sets' coverage and size."""
    metrics = classification_metrics(y_true, judged.probs, names, positive_class, decisions=judged.labels)
    metrics["calibration"] = calibration_summary(judged.probs, y_true)
    calibration = judged.calibration
    metrics["calibrated"] = calibration is not None
    if calibration is not None:
        metrics.update(temperature=calibration.temperature, threshold=calibration.threshold)
    if judged.sets is not None:
        metrics.update(set_coverage(judged, y_true, names), per_class_coverage=per_class)
    return metrics


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    batch_size: int = 64,
    out: str | Path | None = None,
    flip_tta: bool = False,
    ensemble: bool = False,
    overwrite: bool = False,
    positive_class: str | None = None,
    skip_bad_images: bool = False,
    *,
    calibrated: bool = True,
    coverage: float | None = None,
    per_class_coverage: bool = False,
) -> dict[str, Any]:
    """Metrics of a checkpoint on labelled data: class sub-folders (or its ``test/`` part), or a CSV.

    ``checkpoint`` may be a run directory; ``ensemble``: a cross-validation run directory's fold
    models, averaged (the metrics then name the fold checkpoints under ``ensemble_members``).
    ``out``: also write the metrics there as JSON (an existing file only with ``overwrite``).
    ``positive_class`` (two classes): the class sensitivity is about; default the run's own choice
    (its ``--positive-class``, else the default rule of ``resolve_positive_class``).
    ``skip_bad_images``: images that cannot be decoded are left out of the metrics and listed
    under ``skipped`` (and in the log) instead of stopping the evaluation. ``calibrated``: apply the
    checkpoint's calibration (temperature, operating threshold; reports/uncertainty.py) when it has
    one; the metrics then gain ``calibration`` (ECE, Brier, NLL) and, with ``coverage``, how often
    the prediction sets hold the true class (``per_class_coverage``: one threshold per class).
    """
    if overwrite and out is None:
        raise ValueError("--overwrite replaces an existing --out file: it goes with --out")
    if out is not None:  # before any work: a bad --out costs no model loading (see predict)
        check_output_file(out, [*checkpoint_files(checkpoint), data], overwrite=True, flag="--out")
    loaded = Checkpoint.load(checkpoint, ensemble=ensemble)
    source = checkpoint if ensemble else loaded.path
    model, ckpt = loaded.model(), loaded.metadata
    resolve_positive_class(ckpt["class_names"], positive_class)  # a wrong name: one line, before any image is read
    calibration = calibration_for(loaded, calibrated, coverage, per_class_coverage, source)
    root = Path(data)
    if (root / "test").is_dir():
        root = root / "test"
    samples = scan_dataset(root, class_names=ckpt["class_names"])
    if out is not None:  # not one of the images either
        check_output_file(out, samples.paths, overwrite, flag="--out")
    device = _device() if isinstance(model, torch.nn.Module) else torch.device("cpu")
    model, memory_format = optimize_for_inference(model, device)
    preprocess = eval_preprocess(loaded)  # uint8 crops from the loader, float conversion on the device
    dataset = ImageDataset(samples, preprocess.sample, skip_bad_images=skip_bad_images)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_readable)
    skipped: list[BadImage] = []
    with suggest_skipping("evaluate"):
        y_true, probs, loss = predict_loader(
            model,
            readable_batches(loader, skipped),
            device,
            memory_format=memory_format,
            flip_tta=flip_tta,
            preprocess=preprocess.batch,
        )
    log_skipped(skipped, "left out of the metrics")
    if len(y_true) == 0:
        raise _none_readable(skipped, root)
    trained_with = ckpt.get("positive_class")
    judged = judge(probs, calibration, coverage, per_class_coverage, source=str(source))
    metrics = _judged_metrics(y_true, judged, ckpt["class_names"], positive_class or trained_with, per_class_coverage)
    if positive_class is None and trained_with is not None and "positive_class" in metrics:
        metrics["positive_class_reason"] = "the run's choice: set with --positive-class when it was trained"
    metrics.update(loss=loss, checkpoint=str(source), data=str(root), model=ckpt["model_name"], flip_tta=flip_tta)
    if skip_bad_images:
        metrics["skipped"] = [str(bad.error.path) for bad in skipped]
    if ensemble:
        metrics["ensemble_members"] = ckpt["ensemble_members"]
    if out is not None:
        write_text_atomic(out, json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def predict_probabilities(
    checkpoint: str | Path,
    inputs: str | Path,
    batch_size: int = 64,
    flip_tta: bool = False,
    ensemble: bool = False,
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths in natural sort order, their class probabilities (N, classes), class names).

    ``checkpoint``: a checkpoint, an .onnx file or a run directory; ``ensemble``: a cross-validation
    run directory's fold models, whose probabilities are averaged image by image.
    """
    loaded = Checkpoint.load(checkpoint, ensemble=ensemble)
    paths = scan_unlabeled(inputs)
    kept, probs, _ = _probabilities(loaded.model(), loaded.metadata, paths, batch_size, flip_tta)
    return kept, probs, loaded.class_names


class Predictor:
    """A loaded model made ready for inference, with the checkpoint's preprocessing: the one path
    from uint8 images to class probabilities, shared by ``predict`` and ``resnexus serve`` so that
    a served probability is the CSV's probability.

    ``crop`` turns one decoded uint8 image (3, H, W) into the model's centre crop; ``probabilities``
    runs a uint8 batch of crops (B, 3, S, S) and returns (B, classes) float32 probabilities.
    """

    def __init__(self, model: Any, ckpt: Mapping[str, Any] | Checkpoint, flip_tta: bool = False) -> None:
        self.device = _device() if isinstance(model, torch.nn.Module) else torch.device("cpu")
        self.model, self.memory_format = optimize_for_inference(model, self.device)
        self.preprocess = eval_preprocess(ckpt)
        self.flip_tta = flip_tta

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return self.preprocess.sample(image)

    @torch.no_grad()
    def probabilities(self, crops: torch.Tensor) -> np.ndarray:
        images = self.preprocess.batch(crops.to(self.device)).contiguous(memory_format=self.memory_format)
        return class_probabilities(self.model, images, self.flip_tta).cpu().numpy()


@torch.no_grad()
def _probabilities(
    model: Any,
    ckpt: dict[str, Any],
    paths: list[Path],
    batch_size: int,
    flip_tta: bool,
    skip_bad_images: bool = False,
    command: str = "predict",
) -> tuple[list[Path], np.ndarray, list[BadImage]]:
    """(the paths predicted, their class probabilities under a loaded model, preprocessed as
    ``ckpt`` says, the images skipped as unreadable: only with ``skip_bad_images``)."""
    predictor = Predictor(model, ckpt, flip_tta)
    dataset = UnlabeledDataset(paths, predictor.crop, skip_bad_images=skip_bad_images)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_readable)
    kept: list[Path] = []
    probs: list[np.ndarray] = []
    skipped: list[BadImage] = []
    with suggest_skipping(command):
        for images, indices in readable_batches(loader, skipped):
            kept += [paths[int(i)] for i in indices]
            probs.append(predictor.probabilities(images))
    if not probs:
        raise _none_readable(skipped, paths[0].parent if len(paths) > 1 else paths[0])
    return kept, np.concatenate(probs), skipped


def _check_model_source(
    checkpoint: str | Path | None, model: str | None, weights: str | None, weights_dir: Any, ensemble: bool
) -> None:
    """One model source: a checkpoint (which holds its model and weights), or published weights by
    name; an option the chosen source would ignore is refused rather than silently dropped."""
    if checkpoint is not None:
        given = [f for f, v in (("--model", model), ("--weights", weights), ("--weights-dir", weights_dir)) if v]
        if given:
            raise ValueError(
                f"--checkpoint holds its model and weights: {', '.join(given)} would be ignored "
                "(they name published weights to use without a checkpoint); drop them or --checkpoint"
            )
    elif model is None or weights is None:
        raise ValueError(
            "predict needs either --checkpoint, or --model with --weights (published weights, e.g. imagenet)"
        )
    elif ensemble:
        raise ValueError("--ensemble averages the fold models of a --checkpoint `train --folds` directory")


def predict(
    checkpoint: str | Path | None,
    inputs: str | Path,
    output: str | Path,
    batch_size: int = 64,
    id_label: bool = False,
    flip_tta: bool = False,
    ensemble: bool = False,
    overwrite: bool = False,
    *,
    model: str | None = None,
    weights: str | None = None,
    weights_dir: str | Path | None = None,
    skip_bad_images: bool = False,
    calibrated: bool = True,
    coverage: float | None = None,
    per_class_coverage: bool = False,
) -> Path:
    """Write one row per image: ``path,label,<one probability column per class>``.

    Images are read in natural sort order (``img2`` before ``img10``). ``id_label=True`` writes the
    Kaggle submission form ``id,label`` instead (id = file stem, or the relative path when stems
    repeat: :func:`submission_ids`; label = the probability of the second class for two classes, as
    the cats-vs-dogs competition scores it, else the class name). ``flip_tta`` averages each image's
    probabilities with its mirror image's; ``ensemble`` uses a cross-validation run directory's fold
    models (:func:`predict_probabilities`). ``output`` is never an input image or the checkpoint,
    and an existing file is replaced only with ``overwrite`` (:func:`check_output_file`).
    Without a checkpoint, ``model`` and ``weights`` name published ImageNet weights, used as they
    are (:meth:`Checkpoint.published`): the labels are ImageNet class names.
    ``skip_bad_images``: an image that cannot be decoded gets no row (as timm's inference script
    leaves out the samples it skips) and is listed in the log, instead of stopping the run.
    ``calibrated``: the probabilities and labels after the checkpoint's calibration, when it has one
    (its temperature, and for two classes its operating threshold); ``coverage`` adds a ``set``
    column, the classes of each image's prediction set joined by ``|`` (``per_class_coverage``:
    Mondrian sets, the coverage held within each class).
    """
    _check_model_source(checkpoint, model, weights, weights_dir, ensemble)
    # before any work: the path itself; once the images are known, that it is none of them (an
    # existing file is refused only then, so "pass --overwrite" is never said of an input)
    sources = checkpoint_files(checkpoint) if checkpoint is not None else []
    output = check_output_file(output, sources, overwrite=True)
    if checkpoint is None:
        loaded = Checkpoint.published(str(model), str(weights), weights_dir)
    else:
        loaded = Checkpoint.load(checkpoint, ensemble=ensemble)
    if id_label and coverage is not None:
        raise ValueError("--coverage adds a set column; --id-label writes only id,label: use one of them")
    calibration = calibration_for(loaded, calibrated, coverage, per_class_coverage, checkpoint or str(model))
    network, ckpt = loaded.model(), loaded.metadata
    paths = scan_unlabeled(inputs)
    check_output_file(output, paths, overwrite)
    ids = dict(zip(paths, submission_ids(paths, inputs))) if id_label else {}  # ids of all: stable if one is skipped
    paths, probs, skipped = _probabilities(network, ckpt, paths, batch_size, flip_tta, skip_bad_images)
    names = list(ckpt["class_names"])
    log_skipped(skipped, f"no rows for them in {output}")
    judged = judge(probs, calibration, coverage, per_class_coverage, source=str(checkpoint))
    sets = [[s] for s in judged.set_names(names)] or [[] for _ in paths]
    with atomic_write(output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if id_label:
            writer.writerow(["id", "label"])
            for path, p, y in zip(paths, judged.probs, judged.labels):
                writer.writerow([ids[path], f"{p[1]:.6f}" if len(names) == 2 else names[int(y)]])
        else:
            writer.writerow(
                ["path", "label", *(f"prob_{n}" for n in names), *(["set"] if coverage is not None else [])]
            )
            for path, p, y, in_set in zip(paths, judged.probs, judged.labels, sets):
                writer.writerow([str(path), names[int(y)], *(f"{v:.6f}" for v in p), *in_set])
    return output
