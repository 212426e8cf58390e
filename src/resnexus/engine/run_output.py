"""What a run writes and says as it goes, whichever framework trains it: history.csv, metrics.json,
report.md, TensorBoard scalars, and its log lines (data hint, selection, epochs).

engine/run.py calls these at the moments of the lifecycle; the backends use :func:`describe_weights`
in their model line. Paths come from :class:`~resnexus.engine.rundir.RunDir`.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ..data import Samples
from ..files import atomic_write, write_text_atomic
from ..reports import write_report
from .config import MIN_VAL_FOR_SELECTION, SMALL_DATA_HINT_IMAGES, TrainConfig, config_warnings
from .run_checks import describe_splits, split_subfolders
from .runtime import Runtime

if TYPE_CHECKING:
    from .run import TrainResult

__all__ = [
    "add_scalars",
    "close_tensorboard",
    "describe_epoch",
    "describe_selection",
    "describe_weights",
    "history_row",
    "small_data_hint",
    "tensorboard_writer",
    "write_history",
    "write_metrics",
    "write_run_report",
]


def small_data_hint(config: TrainConfig, splits: dict[str, Samples]) -> str | None:
    """One line for a small folder split here: how many images this run never trains on, and the
    command that both measures the recipe and trains on every image; None when it does not apply
    (a large folder, a folder with its own train/ / test/ parts, nothing held back)."""
    total = sum(len(s) for s in splits.values())
    held_back = {name: len(s) for name, s in splits.items() if name != "train" and len(s)}
    if total >= SMALL_DATA_HINT_IMAGES or not held_back or split_subfolders(Path(config.data)):
        return None
    parts = " and ".join(f"{n} for {'validation' if name == 'val' else name}" for name, n in held_back.items())
    group = f" --group-by {shlex.quote(config.group_by)}" if config.group_by else ""
    return (
        f"hint: {sum(held_back.values())} of these {total} images are held back ({parts}) and never trained on; "
        f"on a data set this small `resnexus train --data {shlex.quote(str(config.data))} --folds 5{group}` "
        f"measures the recipe by cross-validation and then trains the model on all {total}"
    )


def history_row(
    epoch: int,
    lr: float,
    train: tuple[float, float, int],
    val: tuple[np.ndarray, np.ndarray, float] | None,
    seconds: float,
) -> dict[str, Any]:
    """One row of history.csv (these columns, in this order) from the epoch's training sums and
    validation predictions; ``lr``: the learning rate the next step would use."""
    train_loss, train_accuracy, images = train
    val_loss = val_accuracy = None
    if val is not None:
        y_val, p_val, val_loss = val
        val_accuracy = float((p_val.argmax(1) == y_val).mean())
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "seconds": seconds,
        "images_per_second": images / seconds,
    }


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(metrics, indent=2))


def describe_weights(config: TrainConfig, model: Any) -> str:
    """Where training started: published weights by tag, a file, or random initialisation."""
    if config.weights is None:
        return "none: trained from scratch"
    tag = getattr(model, "pretrained_cfg", {}).get("weights")
    source = f"{tag} ({config.weights})" if tag and tag != config.weights else str(config.weights)
    frozen = f"; stem and first {config.freeze} stages frozen" if config.freeze else ""
    return f"{source}; fine-tuned{frozen}"


def describe_selection(select: str, monitor: str, asked: str, best: str) -> str:
    """Which weights the best checkpoint (``best``, its file name) will hold, and why when "auto"
    chose the final ones."""
    few = f" (fewer than {MIN_VAL_FOR_SELECTION} validation images)" if asked == "auto" and select == "last" else ""
    return f"{best}: {'the final weights' if select == 'last' else f'the epoch with the best {monitor} accuracy'}{few}"


def describe_epoch(row: dict[str, Any], epochs: int, new_best: bool) -> str:
    val = "" if row["val_loss"] is None else f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return (
        f"epoch {row['epoch']:3d}/{epochs} | train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
        f"{val} | {row['images_per_second']:.0f} img/s | {row['seconds']:.1f}s{' *' if new_best else ''}"
    )


def write_run_report(
    result: TrainResult,
    config: TrainConfig,
    splits: dict[str, Samples],
    y_true: np.ndarray,
    probs: np.ndarray,
    model: nn.Module,
    runtime: Runtime,
    trained_with: str | None = None,
) -> None:
    """report.md; ``trained_with`` names the framework when it is not PyTorch (the Keras backend)."""
    metrics, n_params = result.metrics, sum(p.numel() for p in model.parameters())
    framework = {"trained with": trained_with} if trained_with else {}
    trained = len(result.history)
    stopped = f" of {config.epochs} (early stopping)" if trained < config.epochs and config.early_stopping else ""
    write_report(
        result.run_dir,
        title=f"{config.model} on {Path(config.data).name}",
        metrics=metrics,
        history=result.history,
        y_true=y_true,
        probs=probs,
        class_names=splits["train"].class_names,
        details={
            "model": config.model,
            **framework,
            "parameters": f"{n_params:,}",
            "initial weights": describe_weights(config, model),
            "data": config.data,
            "images (train/val/test)": describe_splits(splits),
            "evaluated on": metrics["split"],
            "epochs": f"{trained}{stopped}",
            "best epoch": result.best_epoch,
            "image size": config.image_size,
            "batch size": config.batch_size,
            "optimizer": f"{config.optimizer}, lr {config.lr}, weight decay {config.weight_decay}",
            "warm-up epochs": f"{config.warmup_epochs:g}",
            "precision": runtime.precision,
            "training time": f"{result.seconds:.0f} s",
            "seed": config.seed,
        },
        skipped=metrics["skipped_images"],
        notes=config_warnings(config),
    )


def tensorboard_writer(folder: Path) -> Any:
    """A SummaryWriter into ``folder`` (RUN_DIR/tensorboard); TensorBoard is an optional dependency."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(log_dir=str(folder))


def add_scalars(board: Any, row: dict[str, Any]) -> None:
    """An epoch's history row as TensorBoard scalars (train/loss, val/accuracy, lr, ...)."""
    if board is None:
        return
    for key, value in row.items():
        if key != "epoch" and value is not None:
            tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key  # train/loss, val/accuracy
            board.add_scalar(tag, value, row["epoch"])
    board.flush()


def close_tensorboard(board: Any, metrics: dict[str, Any], split: str, best_epoch: int) -> None:
    if board is None:
        return
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss"):
        if isinstance(metrics.get(key), float):
            board.add_scalar(f"{split}/{key}", metrics[key], best_epoch)
    board.close()
