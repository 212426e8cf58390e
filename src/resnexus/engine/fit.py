"""Training, top to bottom: data -> model -> optimiser -> epochs -> best checkpoint -> test report.

``train(TrainConfig(...))`` is the whole job; the CLI's ``resnexus train`` only fills the config.
Outputs in the run directory:

    checkpoints/best.pt, checkpoints/last.pt   (see engine/checkpoint.py)
    history.csv    one row per epoch
    metrics.json   test metrics of the best checkpoint (validation metrics if there is no test set)
    report.md      the same with plots (reports/report.py)
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import (
    AugmentConfig, ImageDataset, Samples, default_cache_dir, digits_folder, eval_transform, resolve_splits, train_transform,
)  # fmt: skip
from ..data.check import DataCheck, check_data
from ..data.sampler import EpochBatches
from ..data.scan import DataError
from ..models.registry import create_model, get_entry
from ..reports import classification_metrics, format_metrics, write_report
from . import distributed
from .checkpoint import make_checkpoint, save_atomic
from .interrupt import StopOnSignal, TrainingInterrupted

DEFAULT_MODEL = "resnext50_32x4d"
# The built-in default: real handwritten digits (scikit-learn), a CIFAR-sized ResNet, ~2 minutes on 2 cores.
BUILTIN_RECIPE: dict[str, Any] = dict(
    model="resnet20_cifar",
    image_size=32,
    epochs=15,
    batch_size=64,
    optimizer="sgd",
    lr=0.1,
    weight_decay=5e-4,
    warmup_epochs=1.0,
    augment=AugmentConfig(random_resized_crop_scale=(0.6, 1.0), hflip=0.0, color_jitter=0.0, random_erasing=0.0),
)
# The default for a user's folder: tuned on the MSLD photos (a few hundred images, trained from
# scratch on 2 CPU cores; benchmarks/msld_crossval.py and the README give the measurements).
# 128 px instead of 224 makes each epoch ~3x cheaper, which buys the longer schedule that a
# from-scratch ResNeXt-50 needs; AdamW converged where SGD at the linear-scaling rate barely moved.
DEFAULT_RECIPE: dict[str, Any] = dict(epochs=90, batch_size=16, optimizer="adamw", warmup_epochs=5.0)
SMALL_DATA_IMAGE_SIZE = 128  # for models whose native input is 224 px, when not starting from weights


@dataclass
class TrainConfig:
    """Everything a run depends on; saved into every checkpoint so a run can be reproduced."""

    data: str | None = None  # image folder (class sub-folders, or train/val/test); None: built-in digits
    out: str | None = None  # run directory; default runs/<data>-<model>
    model: str | None = None  # registry name; default resnext50_32x4d (resnet20_cifar for the built-in data)
    model_config: dict[str, Any] = field(default_factory=dict)  # spec overrides, e.g. {"cardinality": 16}
    weights: str | None = None  # initial weights (torchvision/timm/Keras/ours); classifier replaced if needed
    epochs: int | None = None  # default 90 (a few hundred images; use fewer for thousands)
    batch_size: int | None = None  # default 16; the global batch when training in several processes
    lr: float | None = None  # peak learning rate; default 1e-3 (AdamW), 0.1 x batch/256 (SGD)
    optimizer: str | None = None  # "adamw" (default) or "sgd" (Nesterov momentum 0.9)
    weight_decay: float | None = None  # default 0.05 (AdamW) or 5e-4 (SGD); never on norms and biases
    warmup_epochs: float | None = None  # default 5
    label_smoothing: float = 0.1
    image_size: int | None = None  # default: 128 for 224-px models trained from scratch, else the model's size
    crop_fraction: float = 0.875  # evaluation: resize to size / crop_fraction, centre crop
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    group_by: str | None = None  # regex on the file name (or "patient") keeping a group on one side
    seed: int = 0
    precision: str = "auto"  # "auto", "bf16", "fp16", "fp32"
    channels_last: bool | None = None  # None: on for CPUs, and on GPUs when bf16/fp16 is used
    workers: int | None = None  # DataLoader workers; None: chosen from the machine
    cache_dir: str | None = None  # decoded images kept on disk across runs; None: the user cache folder; "off": none
    augment: AugmentConfig | None = None
    mixup: float = 0.0  # Mixup alpha (Zhang et al., 2018 use 0.2 on ImageNet); 0 = off
    cutmix: float = 0.0  # CutMix alpha (Yun et al., 2019 use 1.0); 0 = off; both on: each batch picks one
    ema_decay: float | None = None  # e.g. 0.999: evaluate and keep an exponential moving average of the weights
    clip_grad_norm: float | None = None
    early_stopping: int | None = None  # stop after this many epochs without a better validation accuracy
    balance: str = "none"  # imbalanced classes: "loss" (class-weighted cross-entropy) or "sampler" (balanced batches)
    tta: bool = False  # validate and test on the mean of each image's and its mirror's probabilities
    select: str = "auto"  # best.pt: "val" (best validation accuracy), "last" (final weights), "auto" (see below)
    compile: bool = False  # torch.compile the training forward/backward (pays a compile time up front)
    tensorboard: bool = False  # also write TensorBoard event files to RUN_DIR/tensorboard (needs `tensorboard`)
    positive_class: str | None = None  # two classes: the one sensitivity is about (default: the second)
    skip_bad_images: bool = False  # train on the readable images instead of refusing to start
    checkpoint_every: float = 60.0  # seconds between last.pt saves (also saved at the end and on SIGINT/SIGTERM)
    sync_bn: bool = False  # several GPU processes: BatchNorm statistics over the global batch
    resume: bool = False  # continue the run in `out` from checkpoints/last.pt
    overwrite: bool = False
    verbose: bool = True


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"


def train(config: TrainConfig, splits: dict[str, Samples] | None = None) -> TrainResult:
    """Train and evaluate one model; see the module docstring for what it writes.

    ``splits`` ("train", optional "val" and "test") replaces the split made from ``config.data``:
    cross-validation and ``compare`` use it to give several runs exactly the same images.
    """
    started = time.perf_counter()
    config = complete_config(config)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:  # torchrun --max-restarts restarted us
        config = replace(config, resume=True)
    ctx = distributed.setup()  # one process, or this one's rank under torchrun
    main = ctx.is_main  # only rank 0 writes files and logs
    log = print if config.verbose and main else (lambda *a, **k: None)
    seed_everything(config.seed)
    run_dir = _check_run_dir(config)
    ctx.barrier()  # every rank has checked the run directory before rank 0 writes into it

    # -- data --------------------------------------------------------------------------------
    skipped: list[str] = []
    if splits is None:
        check = check_before_training(config, log)  # every file read once: no crash hours into the run
        skipped = [str(p) for p in check.unreadable]
        splits = resolve_splits(
            config.data, group_by=config.group_by, val_fraction=config.val_fraction,
            test_fraction=config.test_fraction, seed=config.seed,
            exclude=check.unreadable, same_group=check.duplicates,
        )  # fmt: skip
    class_names = splits["train"].class_names
    if config.positive_class is not None and config.positive_class not in class_names:
        raise ValueError(f"--positive-class {config.positive_class!r} is not one of the classes {class_names}")
    entry = get_entry(config.model)
    size = config.image_size
    train_tf = train_transform(size, entry.mean, entry.std, config.augment)
    eval_tf = eval_transform(size, entry.mean, entry.std, config.crop_fraction)
    # Each image is decoded once, kept as uint8 at the size the crops need (in memory, and on disk
    # for the next run); the loaders crop and flip it (`.sample`), the device does the rest (`.batch`).
    cache = dict(cache_size=math.ceil(size / config.crop_fraction),
                 cache_dir=None if config.cache_dir == "off" else config.cache_dir or default_cache_dir())  # fmt: skip
    batches = EpochBatches(splits["train"].labels, config.batch_size, config.seed,
                           balance=config.balance == "sampler", rank=ctx.rank, world=ctx.world)  # fmt: skip
    loaders = {"train": _loader(ImageDataset(splits["train"], train_tf.sample, **cache), config, batches)}
    shards = {name: ctx.shard(len(samples)) for name, samples in splits.items() if name != "train"}
    for name, indices in shards.items():  # evaluation: each rank predicts its share, then all are gathered
        loaders[name] = _loader(ImageDataset(splits[name].subset(indices), eval_tf.sample, **cache), config)
    log(f"data: {describe_splits(splits)}; classes: {', '.join(class_names)}")

    # -- model, precision, optimiser ----------------------------------------------------------
    device = ctx.device
    model = create_model(config.model, num_classes=len(class_names), weights=config.weights, **config.model_config)
    amp_dtype = autocast_dtype(config.precision, device)
    # channels_last: oneDNN's preferred layout on CPUs (fp32 too: 1.2x above), tensor cores' with AMP on GPUs
    channels_last = config.channels_last if config.channels_last is not None else (amp_dtype is not None or device.type == "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if config.sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format)
    optimizer = _make_optimizer(model, config)
    # DDP and compile wrap only the training step; `model` (whose keys checkpoints use) is shared
    train_forward = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_forward = torch.compile(train_forward)
    steps_per_epoch = len(loaders["train"])
    scheduler = warmup_cosine(optimizer, round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    ema = _make_ema(model, config.ema_decay)
    eval_model = ema.module if ema is not None else model  # what is validated, saved and tested
    mixer = _make_mixer(config, len(class_names))
    class_weights = _class_weights(splits["train"], device) if config.balance == "loss" else None
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {config.model} ({n_params:,} params) on {device}{f' x {ctx.world} processes' if ctx.enabled else ''}, "
        f"{'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.')}"
        f"{', channels_last' if channels_last else ''}; {config.epochs} epochs x {steps_per_epoch} steps")  # fmt: skip

    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # only now: bad input leaves nothing behind
    board = _tensorboard_writer(run_dir) if config.tensorboard and main else None
    history: list[dict[str, Any]] = []
    best_score, best_epoch, first_epoch, partial = [-math.inf, -math.inf], 0, 1, None
    if config.resume and (run_dir / "checkpoints" / "last.pt").is_file():
        state = torch.load(run_dir / "checkpoints" / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, best_score, best_epoch = state["history"], state["best_score"], state["best_epoch"]
        first_epoch, partial = state["epoch"] + 1, state.get("partial")
        where = f"step {partial['step']} of epoch {first_epoch}" if partial else f"epoch {state['epoch']}"
        log(f"resuming {run_dir} after {where}")

    def checkpoint(epoch_done: int) -> dict[str, Any]:
        """What best.pt holds: the evaluated weights and everything inference needs."""
        return make_checkpoint(
            eval_model, model_name=config.model, model_config=config.model_config, class_names=class_names,
            image_size=size, mean=entry.mean, std=entry.std, crop_fraction=config.crop_fraction,
            extra={"epoch": epoch_done, "config": asdict(config), "history": history,
                   "positive_class": config.positive_class},
        )  # fmt: skip

    def save_last(ckpt: dict[str, Any], in_progress: dict[str, Any] | None = None) -> None:
        """last.pt: ``ckpt`` plus what continuing needs (and the position, when stopped mid-epoch)."""
        resume_state = {
            "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "best_score": best_score, "best_epoch": best_epoch,
        } | ({"ema": ema.state_dict()} if ema is not None else {})  # fmt: skip
        if in_progress is not None:
            resume_state["partial"] = in_progress
        if main:
            save_atomic(ckpt | resume_state, run_dir / "checkpoints" / "last.pt")

    def evaluate_split(name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Labels, probabilities and mean loss of the evaluated weights on a whole split (all ranks)."""
        y, p, loss = predict_loader(eval_model, loaders[name], device, autocast, memory_format, config.tta, eval_tf.batch)
        return ctx.gather(shards[name], y, p, loss * len(y))

    # -- epochs -------------------------------------------------------------------------------
    monitor = "val" if "val" in loaders else "train"
    select = checkpoint_selection(config, len(splits["val"]) if "val" in splits else 0)
    log(f"best.pt: {'the final weights' if select == 'last' else f'the epoch with the best {monitor} accuracy'}"
        f"{' (fewer than ' + str(MIN_VAL_FOR_SELECTION) + ' validation images)' if config.select == 'auto' and select == 'last' else ''}")
    last_saved = time.monotonic()
    with StopOnSignal() as stop:  # SIGINT / SIGTERM: finish the step, save, exit with a resume hint
        for epoch in range(first_epoch, config.epochs + 1):
            # Each epoch's order and augmentation depend only on (seed, epoch), so a resumed run
            # replays exactly what an uninterrupted one would have done.
            torch.manual_seed(config.seed * 100_003 + epoch)
            loaders["train"].generator.manual_seed(config.seed * 100_003 + epoch)
            epoch_start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)  # accumulated on device: no host sync per step
            correct = torch.zeros((), device=device)
            seen, step = 0, 0
            if partial is not None:  # stopped mid-epoch: skip the steps done, restore the RNG and sums
                step = partial["step"]
                if main:  # the saved sums are over all ranks
                    seen = partial["seen"]
                    loss_sum += partial["loss_sum"]
                    correct += partial["correct"]
                torch.set_rng_state(partial["rng"])
                partial = None
            batches.set_epoch(epoch, start=step)
            for images, labels, params in _progress(loaders["train"], f"epoch {epoch}/{config.epochs}", config.verbose):
                # uint8 crops to the device, then colour jitter, normalisation and erasing there
                images = train_tf.batch(images.to(device, non_blocking=True), params)
                images = images.contiguous(memory_format=memory_format)
                labels = targets = labels.to(device, non_blocking=True)
                if mixer is not None:  # soft targets: a mix of two images' one-hot labels
                    images, targets = mixer(images, labels)
                with autocast():
                    logits = train_forward(images)
                    loss = F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=config.label_smoothing)
                # DDP averages the ranks' gradients; weighting each rank's mean by its share of the
                # global batch makes that the global batch's mean even when shares differ in size
                share = labels.numel() * ctx.world / batches.global_size(step) if ctx.enabled else 1.0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss * share).backward()
                if config.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.detach() * labels.numel()
                correct += (logits.detach().argmax(1) == labels).sum()
                seen += labels.numel()
                step += 1
                if ctx.any(stop.signal is not None):  # every rank stops after the same step
                    sums = ctx.sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]))
                    save_last(checkpoint(epoch - 1), {"step": step, "seen": int(sums[2].item()),
                                                      "loss_sum": sums[0].item(), "correct": sums[1].item(),
                                                      "rng": torch.get_rng_state()})  # fmt: skip
                    ctx.barrier()  # rank 0 has saved before any rank exits (torchrun would kill it)
                    raise TrainingInterrupted(run_dir, stop.signal or signal.SIGTERM, f"step {step} of epoch {epoch}")
            loss_sum, correct, seen_all = ctx.sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]))
            seen = int(seen_all.item())
            row: dict[str, Any] = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": correct.item() / seen,
                "val_loss": None,
                "val_accuracy": None,
            }
            if "val" in loaders:
                y_val, p_val, row["val_loss"] = evaluate_split("val")
                row["val_accuracy"] = float((p_val.argmax(1) == y_val).mean())
            row["seconds"] = time.perf_counter() - epoch_start
            row["images_per_second"] = seen / row["seconds"]
            history.append(row)
            if board is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        board.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value, epoch)
                board.flush()

            # accuracy first, then lower loss (a small validation set has many ties)
            score = [row[f"{monitor}_accuracy"], -(row[f"{monitor}_loss"] if row[f"{monitor}_loss"] is not None else 0.0)]
            improved = select == "last" or score > best_score
            if improved:
                best_score, best_epoch = score, epoch
            stopping_early = bool(config.early_stopping) and epoch - best_epoch >= config.early_stopping
            final = epoch == config.epochs or stopping_early
            stop_now = ctx.any(stop.signal is not None) and not final
            save_best = main and improved and (select == "val" or final)
            save_resumable = final or stop_now or time.monotonic() - last_saved >= config.checkpoint_every
            ckpt = checkpoint(epoch) if save_best or save_resumable else {}  # a weights copy: only when saved
            if save_best:
                save_atomic(ckpt, run_dir / "checkpoints" / "best.pt")  # before last.pt: never behind it
            if save_resumable:
                save_last(ckpt)  # optimizer state included: hundreds of MB for a ResNeXt-50, so not every epoch
                last_saved = time.monotonic()
            if main:
                _write_history(history, run_dir / "history.csv")
            val = "" if row["val_loss"] is None else f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
            log(f"epoch {epoch:3d}/{config.epochs} | train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f"{val} | {row['images_per_second']:.0f} img/s | {row['seconds']:.1f}s"
                f"{' *' if improved and select == 'val' else ''}")
            if stop_now:
                ctx.barrier()
                raise TrainingInterrupted(run_dir, stop.signal or signal.SIGTERM, f"epoch {epoch}")
            if stopping_early:
                log(f"early stopping: no better {monitor} accuracy for {config.early_stopping} epochs")
                break

    # -- final evaluation of the best weights ---------------------------------------------------
    ctx.barrier()  # best.pt is on disk for every rank
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location=device, weights_only=True)
    eval_model.load_state_dict(best["state_dict"])
    final_split = "test" if "test" in loaders else monitor
    if final_split == "train":  # no held-out images at all: report on the training images, unaugmented
        shards["train"] = ctx.shard(len(splits["train"]))
        loaders["train"] = _loader(ImageDataset(splits["train"].subset(shards["train"]), eval_tf.sample, **cache), config)
    y_true, probs, loss = evaluate_split(final_split)
    metrics = classification_metrics(y_true, probs, class_names, config.positive_class)
    metrics.update(split=final_split, loss=loss, best_epoch=best_epoch, model=config.model, skipped_images=skipped)
    seconds = time.perf_counter() - started
    if not main:
        return TrainResult(run_dir=run_dir, metrics=metrics, history=history, best_epoch=best_epoch, seconds=seconds)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if board is not None:
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss"):
            if isinstance(metrics.get(key), float):
                board.add_scalar(f"{final_split}/{key}", metrics[key], best_epoch)
        board.close()
    write_report(
        run_dir, title=f"{config.model} on {Path(config.data).name}", metrics=metrics, history=history,
        y_true=y_true, probs=probs, class_names=class_names,
        details={"model": config.model, "parameters": f"{n_params:,}", "data": config.data,
                 "images (train/val/test)": describe_splits(splits), "evaluated on": final_split,
                 "epochs": config.epochs, "best epoch": best_epoch, "image size": size,
                 "batch size": config.batch_size, "optimizer": f"{config.optimizer}, lr {config.lr}",
                 "precision": "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
                 "training time": f"{seconds:.0f} s", "seed": config.seed},
        skipped=skipped,
    )  # fmt: skip
    log(f"{final_split}: {format_metrics(metrics)}")
    log(f"report: {run_dir / 'report.md'}")
    return TrainResult(run_dir=run_dir, metrics=metrics, history=history, best_epoch=best_epoch, seconds=seconds)


# -- pieces the loop uses ------------------------------------------------------------------------
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
    when the loader gives uint8 crops).
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


MIN_VAL_FOR_SELECTION = 100  # below this, "best on validation" mostly picks noise (see README)


def checkpoint_selection(config: TrainConfig, n_val: int) -> str:
    """"val" or "last": what best.pt holds. "auto" trusts a validation set of at least
    MIN_VAL_FOR_SELECTION images; early stopping needs validation-based selection."""
    if config.select not in ("auto", "val", "last"):
        raise ValueError(f"unknown select {config.select!r}: expected 'auto', 'val' or 'last'")
    if config.select != "auto":
        return config.select
    return "val" if n_val >= MIN_VAL_FOR_SELECTION or config.early_stopping else "last"


def check_before_training(config: TrainConfig, log: Callable[..., None] = print) -> DataCheck:
    """Read every image once; refuse unreadable ones (listing them) unless ``skip_bad_images``."""
    check = check_data(config.data)
    if check.structural_errors:
        raise DataError("the data cannot be trained on:\n" + "\n".join(map(str, check.structural_errors)))
    bad = check.errors
    if bad and not config.skip_bad_images:
        raise DataError(
            f"{len(bad)} image file(s) cannot be used; fix or remove them, or pass --skip-bad-images "
            "to train on the rest:\n" + "\n".join(map(str, bad))
        )
    for finding in check.of("warning"):
        log(f"warning: {finding.path}: {finding.detail}")
    if bad:
        log(f"skipping {len(bad)} unreadable image(s), listed in the report: " + ", ".join(str(f.path) for f in bad))
    return check


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak rate, then cosine decay to zero, stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(loader: DataLoader, description: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar (images/s and ETA) on an interactive terminal; plain iteration in logs and tests."""
    if not (enabled and sys.stderr.isatty()):
        yield from loader
        return
    from tqdm import tqdm

    batches = loader.batch_sampler
    total = batches.images() if isinstance(batches, EpochBatches) else len(loader.dataset)
    with tqdm(total=total, desc=description, unit="img", leave=False) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[1]))  # (images, labels, ...)


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter into RUN_DIR/tensorboard; TensorBoard is an optional dependency."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _make_ema(model: nn.Module, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (BatchNorm statistics included)."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _make_mixer(config: TrainConfig, num_classes: int) -> Callable | None:
    """torchvision's batch-level Mixup / CutMix (one of them per batch when both are on)."""
    from torchvision.transforms import v2

    mixers = []
    if config.mixup > 0:
        mixers.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def _class_weights(samples: Samples, device: torch.device) -> torch.Tensor:
    """Inverse-frequency weights (n / (K * n_k)): every class counts as much in the loss."""
    counts = np.bincount(samples.labels, minlength=len(samples.class_names)).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was started with, set up to continue it."""
    from .checkpoint import load_checkpoint

    saved = dict(load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")["config"])
    augment = saved.pop("augment", None)
    saved["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})
    saved["model_config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model_config"].items()}
    return TrainConfig(**saved | {"out": str(run_dir), "resume": True})


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on convolution and linear weights only: decaying norms and biases only hurts.

    The fused (single-kernel) implementation where PyTorch has one for the parameters' device:
    a resnext50_32x4d AdamW step takes 20 ms fused against 78 ms with the default on 2 CPU cores.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    device = next(model.parameters()).device.type
    fused = {"fused": True} if device in _FUSED_OPTIMIZER_DEVICES else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **fused)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: expected 'sgd' or 'adamw'")


_FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # fused SGD and AdamW: PyTorch >= 2.4


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is faster: GPUs with bf16, CPUs with AMX; fp16 on older GPUs; else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}: expected auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Measured on a 2-core Sapphire Rapids VM with AVX-512 bf16 but no AMX (resnext50_32x4d training
    # step, batch 16, 224 px): fp32 + channels_last 5.3-6.1 images/s, bf16 + channels_last 4.7-4.9.
    # bf16 only pays on CPUs with AMX tiles (the brief's machine: ~3x).
    return torch.bfloat16 if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else None


def _loader(dataset: ImageDataset, config: TrainConfig, batches: EpochBatches | None = None) -> DataLoader:
    """Training batches (from an :class:`EpochBatches`), or evaluation batches in order."""
    batching = {"batch_sampler": batches} if batches is not None else {"batch_size": config.batch_size}
    return DataLoader(
        dataset,
        **batching,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_seed_worker,
        persistent_workers=config.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def complete_config(config: TrainConfig) -> TrainConfig:
    """Every unset field filled: the built-in recipe without data, the model's input size, a new run dir."""
    values = asdict(config) | {"augment": config.augment}
    if config.data is None:
        values["data"] = str(digits_folder())
        for key, value in BUILTIN_RECIPE.items():
            if values.get(key) is None:
                values[key] = value
    values["model"] = values["model"] or DEFAULT_MODEL
    entry = get_entry(values["model"])  # unknown names fail here, before any work
    native = entry.input_size[1]
    size = SMALL_DATA_IMAGE_SIZE if native == 224 and not values["weights"] else native
    for key, default in DEFAULT_RECIPE.items() | {"image_size": size}.items():
        if values[key] is None:  # only unset values: a typed 0 must be rejected below, not replaced
            values[key] = default
    if values["optimizer"] not in ("sgd", "adamw"):
        raise ValueError(f"unknown optimizer {values['optimizer']!r}: expected 'sgd' or 'adamw'")
    sgd = values["optimizer"] == "sgd"
    if values["lr"] is None:
        values["lr"] = 0.1 * values["batch_size"] / 256 if sgd else 1e-3
    if values["weight_decay"] is None:
        values["weight_decay"] = 5e-4 if sgd else 0.05
    values["augment"] = values["augment"] or AugmentConfig()
    if values["workers"] is None:
        values["workers"] = 0 if (torch.get_num_threads() <= 2) else min(8, torch.get_num_threads() // 2)
    if values["out"] is None:
        data = Path(values["data"])
        stem = data.stem if data.suffix.lower() == ".csv" else data.name
        values["out"] = str(unused_path(Path("runs") / f"{stem}-{values['model']}"))
    if values["epochs"] < 1 or values["batch_size"] < 1 or values["image_size"] < 8:
        raise ValueError("epochs and batch size must be >= 1 and the image size >= 8 pixels")
    if values["select"] not in ("auto", "val", "last"):
        raise ValueError(f"unknown select {values['select']!r}: expected 'auto', 'val' or 'last'")
    if values["balance"] not in ("none", "loss", "sampler"):
        raise ValueError(f"unknown balance {values['balance']!r}: expected 'none', 'loss' or 'sampler'")
    return TrainConfig(**values)


def unused_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... : the first that does not exist (runs are never overwritten)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _check_run_dir(config: TrainConfig) -> Path:
    """Never overwrite a finished or interrupted run silently."""
    run_dir = Path(config.out)
    if (run_dir / "checkpoints").exists() and not (config.overwrite or config.resume):
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out, "
            "or pass --overwrite"
        )
    return run_dir


def _write_history(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def describe_splits(splits: dict[str, Samples]) -> str:
    return " / ".join(f"{len(s)} {name}" for name, s in splits.items())

