"""Grad-CAM: which part of an image drove a checkpoint's prediction.

Grad-CAM (Selvaraju et al., 2017) weights the channels of a late feature map by the mean gradient
of a class score and keeps the positive part: a coarse map of the evidence for that class. The
maths is captum's ``LayerGradCam``; this module picks the layer (the model's last stage by
default), preprocesses exactly as ``predict`` does and draws overlays with matplotlib. For a
cross-validation run's fold ensemble (``ensemble=True``) the map is the mean of the fold models'
maps (each scaled to [0, 1] first), for the class the ensemble predicts.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from ..data import BadImage, DataError, UnlabeledDataset, collate_readable, scan_unlabeled
from ..files import atomic_write, check_output_folder
from ..reports import save_figure
from ..reports.uncertainty import Calibration, judge
from .checkpoint import Checkpoint, eval_preprocess
from .inference import log_skipped, readable_batches, suggest_skipping

CSV_NAME = "explain.csv"  # the index explain writes beside the overlays


def default_cam_layer(model: nn.Module) -> str:
    """The module Grad-CAM looks at: the deepest stage in ``feature_info``, else the last conv."""
    info = getattr(model, "feature_info", None)
    if info:
        return info[-1].module
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM to look at")
    return convs[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1], upsampled to the input size, for class ``targets[i]``.

    Each map is scaled by its own maximum; a map with no positive evidence is all zeros.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"no module {layer!r} in {type(model).__name__}; e.g. {default_cam_layer(model)!r}")
    model.eval()
    cam = LayerGradCam(model, modules[layer]).attribute(images, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.float(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    cam = cam[:, 0].clamp_min(0)
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach()


def explain(
    checkpoint: str | Path,
    inputs: str | Path,
    out: str | Path,
    target: str | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    ensemble: bool = False,
    overwrite: bool = False,
    skip_bad_images: bool = False,
    calibrated: bool = True,
    coverage: float | None = None,
    per_class_coverage: bool = False,
) -> Path:
    """Write a Grad-CAM overlay PNG per image into ``out`` and ``out/explain.csv``; returns the CSV.

    ``target`` is a class name (default: each image's predicted class). The CSV lists path,
    predicted class and its probability, every class's probability (``prob_<class>``), with
    ``coverage`` the prediction set (``set``: its classes joined by ``|``), the class the map
    explains and the PNG's file name. For a ``train --folds K`` run's model the probabilities are
    calibrated and the operating threshold decides the predicted class, as ``predict`` does
    (:func:`~resnexus.reports.uncertainty.judge`); ``calibrated=False`` keeps the raw ones.
    ``checkpoint`` may be a run directory; ``ensemble``: a cross-validation run directory's fold
    models (mean probabilities, mean map). The files of an earlier run in ``out`` are replaced
    only with ``overwrite``; ``out`` may not lie inside the input folder (see :func:`_check_out`).
    ``skip_bad_images``: an image that cannot be decoded gets no overlay and no row, and is listed
    in the log, instead of stopping the run.
    """
    paths = scan_unlabeled(inputs)
    out = Path(out).expanduser()
    png_names = _png_names(paths)
    _check_out(out, Path(inputs), checkpoint, [*png_names, CSV_NAME], overwrite)
    loaded = Checkpoint.load(checkpoint, ensemble=ensemble)
    if loaded.kind == "onnx":
        raise ValueError(f"{loaded.path}: Grad-CAM needs the model's gradients; explain a .pt checkpoint, not .onnx")
    model, ckpt = loaded.model(), loaded.metadata
    members = list(model.members) if ensemble else [model]
    names = loaded.class_names
    if target is not None and target not in names:
        raise ValueError(f"--target {target!r} is not one of the checkpoint's classes {names}")
    trust = _calibration(loaded, calibrated, coverage, str(checkpoint))
    layer = layer or default_cam_layer(members[0])
    dataset = UnlabeledDataset(paths, eval_preprocess(loaded), skip_bad_images=skip_bad_images)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_readable)
    skipped: list[BadImage] = []
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with suggest_skipping("explain"):
        for images, batch_indices in readable_batches(loader, skipped):
            indices = [int(i) for i in batch_indices]
            with torch.no_grad():
                judged = judge(
                    model(images).float().softmax(1).numpy(),
                    trust,
                    coverage,
                    per_class_coverage,
                    source=str(checkpoint),
                )
            predicted = torch.from_numpy(judged.labels)
            targets = predicted if target is None else torch.full_like(predicted, names.index(target))
            maps = torch.stack([grad_cam(member, images, targets, layer) for member in members]).mean(0)
            sets = judged.set_names(names)
            for i, index in enumerate(indices):
                row = _row(paths[index], names, judged.probs[i], int(predicted[i]), sets[i] if sets else None)
                row.update(target=names[int(targets[i])], gradcam=png_names[index], layer=layer)
                title = f"predicted {row['predicted']} ({float(row['probability']):.2f}); map for {row['target']}"
                _save_overlay(_unnormalize(images[i], ckpt), maps[i].numpy(), out / row["gradcam"], title)
                rows.append(row)
    log_skipped(skipped, "no overlays or rows for them")
    if not rows:
        raise DataError(f"none of the {len(skipped)} image(s) in {inputs} can be decoded (all skipped)")
    csv_path = out / CSV_NAME
    with atomic_write(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def _calibration(loaded: Checkpoint, wanted: bool, coverage: float | None, source: str) -> Calibration | None:
    """The calibration explain applies (the run's, unless ``wanted`` is False); a ``coverage`` it
    cannot give is refused before any image is read."""
    if coverage is not None and not 0.0 < coverage < 1.0:
        raise ValueError(f"--coverage must be a number above 0 and below 1 (e.g. 0.9), got {coverage}")
    if coverage is not None and not wanted:
        raise ValueError("--coverage needs the calibration: --coverage and --no-calibration ask for opposite things")
    found = loaded.calibration if wanted else None
    if found is None and coverage is not None:  # judge's own refusal, naming the model and the remedy
        judge(np.empty((0, len(loaded.class_names))), None, coverage, source=source)
    return found


def _row(path: Path, names: list[str], probs: np.ndarray, predicted: int, members: str | None) -> dict[str, Any]:
    """An explain.csv row's prediction: path, predicted class and its probability, every class's
    probability, and the prediction set when one was asked for."""
    row: dict[str, Any] = {"path": str(path), "predicted": names[predicted], "probability": f"{probs[predicted]:.6f}"}
    row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(names, probs)})
    if members is not None:
        row["set"] = members
    return row


def explain_image(
    model: nn.Module, ckpt: dict[str, Any], image: torch.Tensor, target: str | None = None, layer: str | None = None
) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of one decoded uint8 image (3, H, W), preprocessed as ``predict`` does.

    Returns (class probabilities, index of the class the map explains: ``target`` or the predicted
    one, the centre crop with the map blended over it as uint8 (S, S, 3)): what ``resnexus serve``
    shows, the right-hand panel of an ``explain`` PNG.
    """
    names: list[str] = ckpt["class_names"]
    if target is not None and target not in names:
        raise ValueError(f"target {target!r} is not one of the checkpoint's classes {names}")
    model.eval()
    batch = eval_preprocess(ckpt)(image)[None]
    with torch.no_grad():
        probs = model(batch).float().softmax(1)[0]
    index = int(probs.argmax()) if target is None else names.index(target)
    cam = grad_cam(model, batch, torch.tensor([index]), layer or default_cam_layer(model))[0].numpy()
    return probs.numpy(), index, overlay_image(_unnormalize(batch[0], ckpt), cam)


def overlay_image(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3 floats in [0, 1]) with ``cam`` (H, W in [0, 1]) blended over it in the jet
    colour map at ``alpha``, as uint8: the same blend as the overlay panel :func:`explain` draws."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    return np.rint(255 * ((1 - alpha) * image + alpha * heat)).clip(0, 255).astype(np.uint8)


def _png_names(paths: list[Path]) -> list[str]:
    """One overlay file name per input: two inputs with the same stem must not share a PNG."""
    used: set[str] = set()
    names = []
    for path in paths:
        candidate, n = f"{path.stem}_gradcam.png", 1
        while candidate in used:
            n += 1
            candidate = f"{path.stem}_{n}_gradcam.png"
        used.add(candidate)
        names.append(candidate)
    return names


def _check_out(out: Path, inputs: Path, checkpoint: str | Path, names: list[str], overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written or would destroy something.

    Not a file; not the input folder or inside it (the overlays would be read as images next
    time), nor the checkpoint's run directory; a folder of other files only with ``overwrite``
    (:func:`resnexus.files.check_output_folder`); and the files of an earlier run there
    (``explain.csv``, same-named PNGs) are replaced only with ``overwrite``.
    """
    check_output_folder(
        out,
        inputs={"checkpoint": checkpoint},
        outside={"input folder": inputs if inputs.is_dir() else None},
        ours=(CSV_NAME, "*_gradcam.png"),
        kind="explain output",
        overwrite=overwrite,
    )
    existing = [name for name in names if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"--out {out} already holds explain output ({', '.join(existing[:3])}); pass --overwrite to replace it"
        )


def _unnormalize(image: torch.Tensor, ckpt: dict[str, Any]) -> np.ndarray:
    """The centre crop the model saw, back as an HWC float image in [0, 1]."""
    mean = torch.tensor(ckpt["mean"])[:, None, None]
    std = torch.tensor(ckpt["std"])[:, None, None]
    rgb = (image * std + mean).clamp(0, 1)
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1)
    return rgb.permute(1, 2, 0).numpy()


def _save_overlay(image: np.ndarray, cam: np.ndarray, path: Path, title: str) -> None:
    """Side by side: the input crop, and the crop with the map blended over it (jet colour map)."""
    fig = Figure(figsize=(6.4, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(image)
    shown = axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    axes[1].set_title("Grad-CAM", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=100)
