"""Evaluate a checkpoint on labelled data, or predict a folder of images into a CSV file.

Both start from a checkpoint alone: it carries the model, the class names and the preprocessing.
An exported ``.onnx`` file (``resnexus export``) works in its place and runs on onnxruntime, and so
does a run directory (a cross-validation run's refit model; see ``checkpoint.resolve_checkpoint``).
``ensemble=True`` uses a cross-validation run's K fold models: the mean of their probabilities.
:func:`predict_loader` is also how training validates and tests, so both measure the same way.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import EvalPreprocess, ImageDataset, UnlabeledDataset, eval_transform, scan_dataset, scan_unlabeled
from ..files import atomic_write, write_text_atomic
from ..reports import classification_metrics
from .checkpoint import FoldEnsemble, load_for_inference, resolve_checkpoint


def class_probabilities(model: nn.Module, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """Softmax of the logits in fp32; with ``flip_tta`` the mean over the image and its mirror."""
    probs = model(images).float().softmax(1)
    if flip_tta:
        probs = 0.5 * (probs + model(images.flip(-1)).float().softmax(1))
    return probs


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
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


def _transform(ckpt: dict[str, Any]) -> EvalPreprocess:
    return eval_transform(ckpt["image_size"], tuple(ckpt["mean"]), tuple(ckpt["std"]), ckpt["crop_fraction"])


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    batch_size: int = 64,
    out: str | Path | None = None,
    flip_tta: bool = False,
    ensemble: bool = False,
) -> dict[str, Any]:
    """Metrics of a checkpoint on labelled data: class sub-folders (or its ``test/`` part), or a CSV.

    ``checkpoint`` may be a run directory; ``ensemble``: a cross-validation run directory's fold
    models, averaged (the metrics then name the fold checkpoints under ``ensemble_members``).
    """
    source = checkpoint if ensemble else resolve_checkpoint(checkpoint)
    model, ckpt = load_for_inference(source, ensemble=ensemble)
    root = Path(data)
    if (root / "test").is_dir():
        root = root / "test"
    samples = scan_dataset(root, class_names=ckpt["class_names"])
    device = _device() if isinstance(model, torch.nn.Module) else torch.device("cpu")
    model, memory_format = optimize_for_inference(model, device)
    preprocess = _transform(ckpt)  # uint8 crops from the loader, float conversion on the device
    loader = DataLoader(ImageDataset(samples, preprocess.sample), batch_size=batch_size)
    y_true, probs, loss = predict_loader(
        model, loader, device, memory_format=memory_format, flip_tta=flip_tta, preprocess=preprocess.batch
    )
    metrics = classification_metrics(y_true, probs, ckpt["class_names"], ckpt.get("positive_class"))
    metrics.update(loss=loss, checkpoint=str(source), data=str(root), model=ckpt["model_name"], flip_tta=flip_tta)
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
    model, ckpt = load_for_inference(checkpoint, ensemble=ensemble)
    paths = scan_unlabeled(inputs)
    device = _device() if isinstance(model, torch.nn.Module) else torch.device("cpu")
    model, memory_format = optimize_for_inference(model, device)
    preprocess = _transform(ckpt)
    loader = DataLoader(UnlabeledDataset(paths, preprocess.sample), batch_size=batch_size)
    probs = np.concatenate(
        [
            class_probabilities(
                model, preprocess.batch(images.to(device)).contiguous(memory_format=memory_format), flip_tta
            )
            .cpu()
            .numpy()
            for images, _ in loader
        ]
    )
    return paths, probs, list(ckpt["class_names"])


def predict(
    checkpoint: str | Path,
    inputs: str | Path,
    output: str | Path,
    batch_size: int = 64,
    id_label: bool = False,
    flip_tta: bool = False,
    ensemble: bool = False,
) -> Path:
    """Write one row per image: ``path,label,<one probability column per class>``.

    Images are read in natural sort order (``img2`` before ``img10``). ``id_label=True`` writes the
    Kaggle submission form ``id,label`` instead (id = file stem; label = the probability of the
    second class for two classes, as the cats-vs-dogs competition scores it, else the class name).
    ``flip_tta`` averages each image's probabilities with its mirror image's; ``ensemble`` uses a
    cross-validation run directory's fold models (:func:`predict_probabilities`).
    """
    paths, probs, names = predict_probabilities(checkpoint, inputs, batch_size, flip_tta, ensemble)
    output = Path(output)
    with atomic_write(output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if id_label:
            writer.writerow(["id", "label"])
            for path, p in zip(paths, probs):
                writer.writerow([path.stem, f"{p[1]:.6f}" if len(names) == 2 else names[int(p.argmax())]])
        else:
            writer.writerow(["path", "label", *(f"prob_{n}" for n in names)])
            for path, p in zip(paths, probs):
                writer.writerow([str(path), names[int(p.argmax())], *(f"{v:.6f}" for v in p)])
    return output
