"""The GPU suite: resnexus' speed on one GPU and every CUDA-only code path run once, in one command.

Sections (``--sections`` picks some; each prints its elapsed time and stops starting new work once
its share of the time budget is spent, so the whole suite stays under 8 minutes on one H100):

* ``train``: images/s of ``resnexus train`` (the Python API, synthetic photos in a temporary
  folder) against a plain torchvision-style loop (ImageFolder + PIL transforms) with
  torchvision's and with timm's model of the same architecture, at the same settings: 224 px,
  batch 128, SGD with momentum 0.9 at lr 0.01, bf16 and fp16 autocast (fp16 with a GradScaler),
  channels_last on and off, ``--compile`` on and off, DataLoader workers and pinned memory. Each row gives the share of the
  GPU's data-sheet peak and of its measured matrix-product peak that the images/s reach
  (3 x the forward FLOPs per image, benchmarks/hardware_peak.py) and the peak GPU memory.
* ``paths``: the CUDA-only code paths, each checked for finite results and a falling loss:
  pinned memory, the batch augmentation on the device (against the same batch on the CPU),
  a run with fp16 grad scaling + gradient clipping, Mixup/CutMix, Random Erasing, EMA and
  SyncBatchNorm, and DistributedDataParallel with NCCL (one process: one GPU) and with gloo and
  SyncBatchNorm over two processes sharing the GPU (NCCL refuses two ranks on one device).
* ``infer``: inference images/s (eager bf16 / fp32, timm's model, ``predict``'s model path),
  ``predict`` end to end on the photos, and batch-1 latency (benchmarks/predict_latency.py).
* ``serve``: ``resnexus serve`` throughput and p50 / p99 latency under concurrent clients,
  dynamic batching on and off (benchmarks/serve_load.py); needs the ``serve`` extra.
* ``keras``: Keras 3 ``model.fit`` images/s of ``resnexus.keras.create_model`` on each installed
  backend (TensorFlow, JAX, torch), each in its own process; a missing backend is skipped, saying so.

Every line names the device; ``--out`` writes every figure and check as JSON. The exit status is 1
when a check failed. ``--dry-run`` runs all of it on the CPU at tiny sizes (resnet18 at 32 px, LeNet
for Keras, a few steps, one thread per process; ``--compile`` with torch.compile's eager backend,
inductor's C++ build taking minutes on 2 cores): what CI runs to keep the suite working until a GPU
runs it.

    python benchmarks/gpu_suite.py --out gpu.json                    # on a GPU machine, < 8 min
    python benchmarks/gpu_suite.py --dry-run --out dry.json          # anywhere: 6 min on 2 busy cores
    python benchmarks/gpu_suite.py --sections train,infer --out gpu.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
SECTIONS = ("train", "paths", "infer", "serve", "keras")
RESULT_TAG = "RESULT "  # the last line of a Keras worker: RESULT {json}


class TrainCase(NamedTuple):
    runner: str  # "resnexus" (its train API), "torchvision" or "timm" (the plain loop)
    precision: str  # "bf16" or "fp16" (with a GradScaler)
    channels_last: bool = True
    compile: bool = False
    workers: int | None = None  # None: Sizes.workers

    def label(self) -> str:
        parts = [self.runner, self.precision, "channels_last" if self.channels_last else "contiguous"]
        parts += ["compile"] if self.compile else []
        parts += [f"{self.workers} workers"] if self.workers is not None else []
        return " ".join(parts)


# in order of priority: a section out of time skips the rest
TRAIN_CASES = (
    TrainCase("resnexus", "bf16"),
    TrainCase("torchvision", "bf16"),
    TrainCase("timm", "bf16"),
    TrainCase("resnexus", "fp16"),
    TrainCase("torchvision", "fp16"),
    TrainCase("timm", "fp16"),
    TrainCase("resnexus", "bf16", compile=True),
    TrainCase("resnexus", "bf16", workers=0),
    TrainCase("resnexus", "bf16", channels_last=False),
)
# the dry run: every setting above at least once, in fewer runs
DRY_TRAIN_CASES = (
    TrainCase("resnexus", "bf16"),
    TrainCase("torchvision", "fp16"),
    TrainCase("timm", "bf16", workers=0),
    TrainCase("resnexus", "bf16", channels_last=False, compile=True, workers=0),
)  # fp16 in resnexus: the paths section's run


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: GPU_SIZES for the real run, DRY_SIZES for the CPU dry run."""

    model: str  # a name that resnexus, torchvision and timm all build (the same architecture)
    image_size: int
    batch: int
    images: int  # synthetic training photos
    epochs: int  # the first (decoding, kernel choice, compilation) is not counted
    workers: int
    infer_batch: int
    infer_steps: int
    latency_rounds: int
    paths_model: str
    paths_size: int
    paths_batch: int
    paths_images: int
    ddp_steps: int
    serve_seconds: float
    serve_clients: int
    serve_max_batch: int
    keras_model: str
    keras_size: int
    keras_batch: int
    keras_steps: int
    matmul_n: int
    train_cases: tuple[TrainCase, ...] = TRAIN_CASES
    budget_s: dict[str, float] = field(default_factory=dict)  # per section; none: no limit


GPU_SIZES = Sizes(
    model="resnext50_32x4d", image_size=224, batch=128, images=2048, epochs=3,
    workers=min(8, (os.cpu_count() or 2) // 2), infer_batch=256, infer_steps=20, latency_rounds=5,
    paths_model="resnet18", paths_size=112, paths_batch=64, paths_images=512, ddp_steps=10,
    serve_seconds=10.0, serve_clients=32, serve_max_batch=32,
    keras_model="resnext50_32x4d", keras_size=224, keras_batch=64, keras_steps=8, matmul_n=8192,
    budget_s={"train": 210.0, "paths": 70.0, "infer": 45.0, "serve": 60.0, "keras": 80.0},
)  # fmt: skip
DRY_SIZES = Sizes(
    model="resnet18", image_size=32, batch=8, images=64, epochs=3, workers=1, infer_batch=16,
    infer_steps=2, latency_rounds=2, paths_model="resnet18", paths_size=32, paths_batch=8,
    paths_images=48, ddp_steps=4, serve_seconds=2.0, serve_clients=4, serve_max_batch=8,
    keras_model="lenet", keras_size=32, keras_batch=8, keras_steps=4, matmul_n=256,
    train_cases=DRY_TRAIN_CASES,
)  # fmt: skip


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


# -- the report: every line names the device; rows, checks and skips go to the JSON summary --------
@dataclass
class Report:
    device_name: str
    dry_run: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    sections: dict[str, float] = field(default_factory=dict)
    section: str = ""

    def say(self, text: str) -> None:
        print(f"[{self.device_name}] {self.section + ': ' if self.section else ''}{text}", flush=True)

    def row(self, name: str, text: str, **values: Any) -> None:
        self.rows.append({"section": self.section, "name": name, **values})
        self.say(f"{name}: {text}")

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"section": self.section, "name": name, "ok": bool(ok), "detail": detail})
        self.say(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}")
        return bool(ok)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"section": self.section, "name": name, "reason": reason})
        self.say(f"skipped {name}: {reason}")

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device_name,
            "dry_run": self.dry_run,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "section_seconds": self.sections,
            "rows": self.rows,
            "checks": self.checks,
            "skipped": self.skipped,
            "ok": all(c["ok"] for c in self.checks),
        }


class Budget:
    """A section's share of the time: work that would start after it is spent is skipped."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start = seconds, time.monotonic()

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Context:
    """What every section gets: the device, sizes, the synthetic photos and a scratch folder."""

    device: torch.device
    sizes: Sizes
    report: Report
    photos: Path
    work: Path
    budget: Budget = field(default_factory=lambda: Budget(None))

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or a skip when the section's time is spent; an exception is a failed check."""
        if self.budget.spent():
            self.report.skip(name, f"the section's {self.budget.seconds:.0f} s budget is spent")
            return None
        try:
            return fn()
        except Exception as error:  # a benchmark reports and goes on
            message = f"{type(error).__name__}: {error}".replace("\n", " ")[:400]
            self.report.check(name, False, f"raised {message}")
            return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from resnexus.engine.runtime import cpu_model

    model = cpu_model()
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'' if threads == 1 else 's'}, no GPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_photos(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` JPEGs in two class folders, red-tinted and blue-tinted noise: a task a few steps learn,
    so "the loss falls" is a check that can fail, with every photo different (no duplicate warnings)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % 2
        pixels = rng.normal(110, 40, (size, size, 3))
        pixels[..., 0 if label == 0 else 2] += 60
        folder = root / ("red" if label == 0 else "blue")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def falls(losses: list[float]) -> tuple[bool, str]:
    """Finite losses whose last is below the first, and the figures that say so."""
    finite = all(math.isfinite(v) for v in losses)
    text = " -> ".join(f"{v:.3f}" for v in losses)
    return finite and len(losses) > 1 and losses[-1] < losses[0], f"losses {text}"


# -- train: resnexus vs a plain loop with torchvision's and timm's models -----------------------------
def resnexus_train(ctx: Context, case: TrainCase, out: Path, **options: Any) -> tuple[list[float], list[float], Any]:
    """(images/s per epoch, train loss per epoch, the TrainResult) of one `resnexus train` run."""
    from resnexus.engine import TrainConfig, train

    s = ctx.sizes
    settings = dict(
        data=str(ctx.photos), out=str(out), model=s.model, image_size=s.image_size, batch_size=s.batch,
        epochs=s.epochs, optimizer="sgd", lr=0.01, warmup_epochs=0.5, precision=case.precision,
        channels_last=case.channels_last, compile=case.compile,
        workers=s.workers if case.workers is None else case.workers,
        val_fraction=0.0, test_fraction=0.0, checkpoint_every=1e9, cache_dir=str(ctx.work / "cache"),
        verbose=False,
    ) | options  # fmt: skip
    result = train(TrainConfig(**settings))
    return (
        [h["images_per_second"] for h in result.history],
        [h["train_loss"] for h in result.history],
        result,
    )


def plain_train(ctx: Context, case: TrainCase) -> tuple[list[float], list[float]]:
    """The loop tutorials write (train_vs_tutorial.py's loader and SGD), with the case's precision,
    layout, compile, workers and pinned memory: images/s and mean loss per epoch."""
    import torchvision

    from train_vs_tutorial import tutorial_loader

    s, device = ctx.sizes, ctx.device
    torch.manual_seed(0)  # the weights and the order of the photos: the same in every run
    workers = s.workers if case.workers is None else case.workers
    dataset = tutorial_loader(ctx.photos, s.image_size, s.batch).dataset
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=s.batch, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )  # fmt: skip
    if case.runner == "timm":
        import timm

        model = timm.create_model(s.model, num_classes=2)
    else:
        model = getattr(torchvision.models, s.model)(num_classes=2)
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout).train()
    forward = torch.compile(model) if case.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = AMP[case.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    rates, losses = [], []
    for _ in range(s.epochs):
        start, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(forward(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
        losses.append(loss_sum.item() / seen)  # .item() waits for the GPU
        rates.append(seen / (time.perf_counter() - start))
    return rates, losses


def section_train(ctx: Context) -> None:
    import hardware_peak

    s, device, report = ctx.sizes, ctx.device, ctx.report
    flops = hardware_peak.step_flops(s.model, 2, s.image_size) / 2  # batch 2: BatchNorm needs 2 values
    peaks = {}
    for precision in ("bf16", "fp16"):
        nominal, source = hardware_peak.nominal_peak_flops(device, AMP[precision])
        measured = hardware_peak.matmul_flops(device, AMP[precision], n=s.matmul_n)
        peaks[precision] = (nominal, measured)
        report.say(
            f"{precision} peak: nominal {nominal / 1e12 if nominal else float('nan'):.3g} TFLOP/s ({source}); "
            f"measured {s.matmul_n}^3 matrix product {measured / 1e12:.3g} TFLOP/s"
        )
    report.say(
        f"{s.model}, {s.image_size} px, batch {s.batch}, {s.images} photos, {s.epochs} epochs (images/s: median "
        f"of the epochs after the first), {flops / 1e9:.1f} GFLOP per image per training step (3 x forward)"
    )
    for i, case in enumerate(s.train_cases):
        if case.runner == "timm" and not _installed("timm"):
            report.skip(case.label(), "timm is not installed")
            continue
        ctx.run(case.label(), functools.partial(_train_case, ctx, case, i, flops, peaks[case.precision]))


def _train_case(ctx: Context, case: TrainCase, index: int, flops: float, peaks: tuple[float | None, float]) -> None:
    device, report = ctx.device, ctx.report
    reset_peak_memory(device)
    start = time.perf_counter()
    if case.runner == "resnexus":
        rates, losses, _ = resnexus_train(ctx, case, ctx.work / f"train-{index}")
    else:
        rates, losses = plain_train(ctx, case)
    seconds = time.perf_counter() - start
    rate = statistics.median(rates[1:] or rates)
    nominal, measured = peaks
    share = rate * flops / nominal if nominal else None
    memory = peak_memory_mib(device)
    report.row(
        case.label(),
        f"{rate:8.1f} images/s, {100 * share if share else float('nan'):5.1f} % of the nominal peak, "
        f"{100 * rate * flops / measured:5.1f} % of the measured matmul peak, peak memory "
        f"{f'{memory:.0f} MiB' if memory is not None else 'n/a (CPU)'}, {seconds:.0f} s in all",
        images_per_second=rate, epoch_images_per_second=rates, peak_share=share,
        matmul_share=rate * flops / measured, peak_memory_mib=memory, seconds=seconds, losses=losses,
    )  # fmt: skip
    ok, detail = falls(losses)
    report.check(f"{case.label()}: finite, loss falls", ok, detail)


# -- paths: each CUDA-only code path once, with checks ------------------------------------------------
def section_paths(ctx: Context) -> None:
    ctx.run("pinned memory and device batch augmentation", functools.partial(_loader_and_augment, ctx))
    ctx.run("fp16 grad scaling, Mixup/CutMix, erasing, EMA, SyncBatchNorm", functools.partial(_paths_run, ctx))
    if ctx.device.type == "cuda":
        ctx.run("DDP nccl x 1", functools.partial(_ddp_check, ctx, "nccl", 1, True))
        ctx.run("DDP gloo x 2 on one GPU", functools.partial(_ddp_check, ctx, "gloo", 2, True))
    else:
        ctx.report.skip("DDP nccl", "NCCL needs a GPU; the dry run runs gloo with 2 CPU processes")
        ctx.run("DDP gloo x 2", functools.partial(_ddp_check, ctx, "gloo", 2, False))


def _loader_and_augment(ctx: Context) -> None:
    """resnexus' training loader (pinned on GPUs) and TrainAugment.batch on the device vs the CPU."""
    from resnexus.data import AugmentConfig, ImageDataset, scan_folder, train_transform
    from resnexus.data.sampler import EpochBatches
    from resnexus.engine import TrainConfig
    from resnexus.engine.run import make_loader

    s, device, report = ctx.sizes, ctx.device, ctx.report
    samples = scan_folder(ctx.photos)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    plain = train_transform(s.paths_size, mean, std, AugmentConfig(random_erasing=0.0))
    erasing = train_transform(s.paths_size, mean, std, AugmentConfig(random_erasing=1.0))
    config = TrainConfig(batch_size=s.paths_batch, workers=s.workers, seed=0)
    loader = make_loader(ImageDataset(samples, erasing.sample), config, EpochBatches(samples.labels, s.paths_batch, 0))
    images, _labels, params = next(iter(loader))
    cuda = device.type == "cuda"
    report.check(
        "pinned memory",
        loader.pin_memory == cuda and images.is_pinned() == cuda,
        f"DataLoader pin_memory={loader.pin_memory}, batch pinned={images.is_pinned()} (expected {cuda})",
    )
    params_plain = params.clone()
    params_plain[:, plain.ERASE] = 0  # the same colour factors, no erasing: comparable on both devices
    on_device = plain.batch(images.to(device, non_blocking=True), params_plain)
    on_cpu = plain.batch(images, params_plain)
    diff = (on_device.cpu() - on_cpu).abs().max().item()
    report.check(
        "batch augmentation on the device = on the CPU",
        on_device.device.type == device.type and diff < 1e-4,
        f"{tuple(on_device.shape)} on {on_device.device}, max |diff| vs CPU {diff:.1e}",
    )
    erased = erasing.batch(images.to(device), params)
    n_erased = int((params[:, erasing.ERASE] > 0).sum())
    report.check(
        "Random Erasing on the device",
        bool(torch.isfinite(erased).all()) and n_erased > 0 and erased.device.type == device.type,
        f"{n_erased} of {len(params)} images erased on {erased.device}, all values finite",
    )


def _paths_run(ctx: Context) -> None:
    """One small `resnexus train` through fp16 grad scaling + clipping, Mixup/CutMix, Random Erasing, EMA
    and (GPU) SyncBatchNorm; on the CPU, SyncBatchNorm's refusal is checked instead."""
    from resnexus.data import AugmentConfig
    from resnexus.engine.rundir import RunDir

    s, report = ctx.sizes, ctx.report
    small = replace(ctx, sizes=replace(s, model=s.paths_model, image_size=s.paths_size, batch=s.paths_batch))
    small.photos = ctx.work / "paths-photos"
    if not small.photos.exists():
        make_photos(small.photos, s.paths_images, round(s.paths_size * 1.15), seed=1)
    cuda = ctx.device.type == "cuda"
    options = dict(
        mixup=0.2, cutmix=1.0, ema_decay=0.9, clip_grad_norm=5.0, sync_bn=cuda, epochs=max(3, s.epochs),
        augment=AugmentConfig(random_erasing=0.5),
    )  # fmt: skip
    rates, losses, result = resnexus_train(small, TrainCase("resnexus", "fp16"), ctx.work / "paths-run", **options)
    ok, detail = falls(losses)
    report.check(
        "fp16 + Mixup/CutMix + erasing + EMA" + (" + SyncBatchNorm" if cuda else "") + ": loss falls", ok, detail
    )
    scaler = torch.load(RunDir(result.run_dir).last(), map_location="cpu", weights_only=True)["scaler"]
    scale = scaler.get("scale")
    report.check(
        "fp16 GradScaler on",
        scale is not None and math.isfinite(scale) and scale > 0,
        f"last.pt's scaler state {scaler or '{} (disabled)'}",
    )
    accuracy = result.metrics.get("accuracy")
    report.row(
        "small fp16 run", f"{statistics.median(rates[1:] or rates):.1f} images/s, accuracy on its photos {accuracy}",
        images_per_second=statistics.median(rates[1:] or rates), losses=losses, accuracy=accuracy,
    )  # fmt: skip
    if not cuda:
        try:
            resnexus_train(small, TrainCase("resnexus", "bf16"), ctx.work / "sync-bn-cpu", sync_bn=True)
            report.check("SyncBatchNorm refused on the CPU", False, "a CPU run with sync_bn=True started")
        except ValueError as error:
            report.skip("SyncBatchNorm", f"CUDA only; resnexus refuses it on the CPU in one line: {error}")


def _ddp_check(ctx: Context, backend: str, world: int, sync_bn: bool) -> None:
    """DistributedDataParallel of a resnexus model over ``world`` spawned processes: the loss falls on
    every rank and the weights (and, with SyncBatchNorm over 2 ranks, the running statistics) agree."""
    import torch.multiprocessing as mp

    s, report = ctx.sizes, ctx.report
    out = ctx.work / f"ddp-{backend}-{world}"
    out.mkdir(exist_ok=True)
    args = (world, backend, sync_bn, s.paths_model, s.paths_size, s.paths_batch, s.ddp_steps, free_port(), str(out))
    mp.start_processes(ddp_worker, args=args, nprocs=world, start_method="spawn")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    name = f"DDP {backend} x {world}" + (" + SyncBatchNorm" if sync_bn else "")
    for r in results:
        ok, detail = falls(r["losses"])
        report.check(f"{name}, rank {r['rank']}: loss falls", ok, detail)
    weights = max(r["weights_diff"] for r in results)
    buffers = max(r["buffers_diff"] for r in results)
    synced = sync_bn and world > 1
    report.check(
        f"{name}: ranks agree",
        weights == 0.0 and (buffers < 1e-5 if synced else True),
        f"max |weight diff| {weights:.1e}, max |BatchNorm running-statistics diff| {buffers:.1e}"
        + ("" if synced else " (not synchronised: " + ("one process)" if sync_bn else "plain BatchNorm)")),
    )


def ddp_worker(
    rank: int, world: int, backend: str, sync_bn: bool, model_name: str, size: int, batch: int, steps: int,
    port: int, out: str,
) -> None:  # fmt: skip
    """One rank of the DDP check (spawned): ``steps`` AdamW steps on this rank's own red/blue batch."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from resnexus import create_model

    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=2)
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[0] if cuda else None)
    generator = torch.Generator().manual_seed(100 + rank)
    y = torch.arange(batch) % 2
    x = torch.randn(batch, 3, size, size, generator=generator) * 0.5
    x[:, 0] += (y == 0).float()[:, None, None] + rank * 0.3  # each rank's images differ: BN stats too
    x[:, 2] += (y == 1).float()[:, None, None]
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    def spread(tensors: list[torch.Tensor]) -> float:
        flat = torch.cat([t.detach().float().flatten() for t in tensors])
        reference = flat.clone()
        dist.broadcast(reference, 0)
        return (flat - reference).abs().max().item()

    weights = spread(list(model.parameters()))
    buffers = spread([b for n, b in model.named_buffers() if "running" in n])
    record = {"rank": rank, "losses": losses, "weights_diff": weights, "buffers_diff": buffers}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


# -- infer: inference, predict, batch-1 latency -------------------------------------------------------
def section_infer(ctx: Context) -> None:
    ctx.run("inference images/s", functools.partial(_inference, ctx))
    ctx.run("predict end to end", functools.partial(_predict, ctx))
    ctx.run("batch-1 latency", functools.partial(_latency, ctx))


def _inference(ctx: Context) -> None:
    from resnexus import create_model
    from resnexus.engine.inference import Predictor
    from resnexus.engine.runtime import Runtime

    s, device = ctx.sizes, ctx.device
    x = torch.randn(s.infer_batch, 3, s.image_size, s.image_size, device=device)
    ours = create_model(s.model, num_classes=2).eval()
    models = {"resnexus": ours}
    if _installed("timm"):
        import timm

        models["timm"] = timm.create_model(s.model, num_classes=2).eval()
    else:
        ctx.report.skip("timm eval", "timm is not installed")
    for precision in ("bf16", "fp32"):
        runtime = Runtime.choose(device, precision, channels_last=True)
        for name, model in models.items():
            model = model.to(device, memory_format=runtime.memory_format)
            batch = x.contiguous(memory_format=runtime.memory_format)

            def forward(
                model: torch.nn.Module = model, batch: torch.Tensor = batch, runtime: Runtime = runtime
            ) -> None:
                with torch.no_grad(), runtime.autocast():
                    model(batch)

            _report_rate(ctx, f"{name} eval {precision} channels_last", forward, s.infer_batch)
    ckpt = {"image_size": s.image_size, "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_fraction": 0.875}
    twin = create_model(s.model, num_classes=2)
    twin.load_state_dict(ours.state_dict())
    predictor = Predictor(twin, ckpt)
    crops = torch.randint(0, 256, (s.infer_batch, 3, s.image_size, s.image_size), dtype=torch.uint8)
    probs = predictor.probabilities(crops)
    ctx.report.check(
        "predict's model path: probabilities",
        bool(np.isfinite(probs).all()) and np.allclose(probs.sum(1), 1, atol=1e-4),
        f"{probs.shape} on {predictor.device}, rows sum to 1",
    )
    _report_rate(
        ctx, "predict's model path (BatchNorm folded, uint8 in)", lambda: predictor.probabilities(crops), s.infer_batch
    )


def _report_rate(ctx: Context, name: str, fn: Callable[[], Any], batch: int) -> None:
    fn()  # warm-up: kernel choice
    fn()
    synchronize(ctx.device)
    start = time.perf_counter()
    for _ in range(ctx.sizes.infer_steps):
        fn()
    synchronize(ctx.device)
    rate = batch * ctx.sizes.infer_steps / (time.perf_counter() - start)
    ctx.report.row(name, f"{rate:9.1f} images/s (batch {batch})", images_per_second=rate, batch=batch)


def _predict(ctx: Context) -> None:
    """`predict` (the Python API of the command) on the synthetic photos: images/s including the
    model's loading and every photo's decoding."""
    import predict_latency
    from resnexus.engine import predict

    s = ctx.sizes
    _, checkpoint = predict_latency.random_checkpoint(s.model, s.image_size, ctx.work)
    output = ctx.work / "predictions.csv"
    start = time.perf_counter()
    predict(checkpoint, ctx.photos, output, batch_size=s.infer_batch, overwrite=True)
    seconds = time.perf_counter() - start
    rows = output.read_text().splitlines()[1:]
    rate = len(rows) / seconds
    ctx.report.row(
        "predict end to end", f"{rate:9.1f} images/s ({len(rows)} photos in {seconds:.1f} s, loading included)",
        images_per_second=rate, images=len(rows), seconds=seconds,
    )  # fmt: skip
    ctx.report.check("predict wrote a row per photo", len(rows) == s.images, f"{len(rows)} rows for {s.images} photos")


def _latency(ctx: Context) -> None:
    import predict_latency

    s = ctx.sizes
    times, diffs = predict_latency.latencies(s.model, s.image_size, s.latency_rounds, 3, ctx.device)
    for name, values in times.items():
        ms = 1000 * statistics.median(values)
        where = " (CPU)" if name.startswith("onnx") else ""
        ctx.report.row(f"batch 1 {name}{where}", f"{ms:7.2f} ms", latency_ms=ms)
    ctx.report.say(f"max |logit diff| vs eager fp32: {diffs}")


# -- serve ---------------------------------------------------------------------------------------------
def section_serve(ctx: Context) -> None:
    missing = [m for m in ("fastapi", "uvicorn", "multipart", "httpx", "prometheus_client") if not _installed(m)]
    if missing:
        ctx.report.skip("serve", f"needs the serve extra: {', '.join(missing)} not installed")
        return
    import serve_load

    s = ctx.sizes
    checkpoint = serve_load.checkpoints(s.model, ctx.work, onnx=False, image_size=s.image_size)["pytorch"]
    jpeg = serve_load.photo()
    for batching in (True, False):
        ctx.run(
            f"serve batching {'on' if batching else 'off'}", functools.partial(_serve, ctx, checkpoint, jpeg, batching)
        )


def _serve(ctx: Context, checkpoint: Path, jpeg: bytes, batching: bool) -> None:
    import serve_load

    s = ctx.sizes
    r = serve_load.run(checkpoint, batching, jpeg, s.serve_seconds, s.serve_clients, s.serve_max_batch, 5.0)
    name = f"serve {s.model}, dynamic batching {'on' if batching else 'off'}"
    ctx.report.row(
        name,
        f"{r['throughput']:7.1f} images/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, mean batch "
        f"{r['mean_batch']:.2f} ({s.serve_clients} clients, {s.serve_seconds:.0f} s)",
        **{k: float(v) for k, v in r.items()},
    )
    ctx.report.check(
        f"{name}: no error, nothing lost",
        r["errors"] == 0 and r["lost"] == 0 and r["requests"] > 0,
        f"{r['requests']} answered, {r['errors']} errors, {r['lost']} lost",
    )


# -- keras: model.fit on each backend, in its own process ------------------------------------------------
KERAS_BACKENDS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}  # the quickest to start first


def section_keras(ctx: Context) -> None:
    if not _installed("keras"):
        ctx.report.skip("keras", "keras is not installed (the keras extra)")
        return
    for backend, module in KERAS_BACKENDS.items():
        if not _installed(module):
            ctx.report.skip(f"keras {backend}", f"{module} is not installed")
            continue
        ctx.run(f"keras {backend}", functools.partial(_keras_backend, ctx, backend))


def _keras_backend(ctx: Context, backend: str) -> None:
    s = ctx.sizes
    env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if ctx.device.type == "cpu":
        env |= {"CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, __file__, "--keras-worker", backend, "--model", s.keras_model]
    command += ["--size", str(s.keras_size), "--batch", str(s.keras_batch), "--steps", str(s.keras_steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:400]
        ctx.report.check(f"keras {backend}", False, f"the worker exited with {done.returncode}: {tail}")
        return
    r = json.loads(lines[-1][len(RESULT_TAG) :])
    ctx.report.row(
        f"keras {backend} fit",
        f"{r['images_per_second']:8.1f} images/s (last epoch), first epoch {r['first_epoch_s']:.1f} s "
        f"(tracing), on {r['device']}, {s.keras_model} {s.keras_size} px batch {s.keras_batch}, fp32",
        **r,
    )
    ok, detail = falls(r["losses"])
    ctx.report.check(f"keras {backend}: finite, loss falls", ok, detail)


def keras_worker(backend: str, model_name: str, size: int, batch: int, steps: int) -> dict[str, Any]:
    """model.fit of resnexus.keras.create_model on red/blue arrays; KERAS_BACKEND is set by the parent."""
    # isort: off
    from resnexus import keras as rk  # before TensorFlow: it loads torchvision first (the order that works)
    import keras

    # isort: on
    from resnexus.models.registry import get_entry

    keras.utils.set_random_seed(0)
    built_for = {"img_size": size} if "img_size" in get_entry(model_name).config else {}  # LeNet: one size
    model = rk.create_model(model_name, num_classes=2, input_shape=(size, size, 3), **built_for)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    n = batch * steps
    y = np.arange(n) % 2
    x = rng.normal(0, 0.5, (n, size, size, 3)).astype(np.float32)
    x[y == 0, ..., 0] += 1.0
    x[y == 1, ..., 2] += 1.0
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    history = model.fit(x, y, batch_size=batch, epochs=3, verbose=0, callbacks=[Timer()], shuffle=True)
    return {
        "backend": keras.backend.backend(),
        "device": _keras_device(backend),
        "images_per_second": n / times[-1],
        "first_epoch_s": times[0],
        "losses": [float(v) for v in history.history["loss"]],
    }


def _keras_device(backend: str) -> str:
    if backend == "jax":
        import jax

        return str(jax.devices()[0])
    if backend == "tensorflow":
        import tensorflow as tf

        return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- the command ----------------------------------------------------------------------------------------
RUNNERS = {
    "train": section_train,
    "paths": section_paths,
    "infer": section_infer,
    "serve": section_serve,
    "keras": section_keras,
}


def run_suite(sections: list[str], dry_run: bool, out: Path | None) -> int:
    device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")
    sizes = DRY_SIZES if device.type == "cpu" else GPU_SIZES
    if device.type == "cpu":
        # one thread per process: on a small shared CPU, OpenMP's threads waiting on each other made
        # a step 6x slower; the subprocesses (serve, Keras, DDP ranks) inherit the variables
        torch.set_num_threads(1)
        os.environ.update(OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        # inductor builds C++ for minutes on a small CPU; the eager backend still traces the step
        torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]
    report = Report(device_name(device), dry_run)
    if device.type == "cpu":
        if not dry_run:
            report.say("no GPU: running the dry run's sizes on the CPU (figures are not GPU figures)")
        report.say("one thread per process; torch.compile with its eager backend (graph capture, no code generation)")
    report.say(f"torch {torch.__version__}, {os.cpu_count()} CPU cores; sections: {', '.join(sections)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RESNEXUS_HOME", str(work / "home"))  # nothing left in the user's cache
        photos = make_photos(work / "photos", sizes.images, round(sizes.image_size * 1.15))
        for name in sections:
            report.section = name
            ctx = Context(device, sizes, report, photos, work, Budget(sizes.budget_s.get(name)))
            try:
                RUNNERS[name](ctx)
            except Exception as error:  # one section failing does not stop the others
                report.check(name, False, f"raised {type(error).__name__}: {error}"[:400])
            report.sections[name] = round(ctx.budget.elapsed(), 1)
            report.say(f"done in {ctx.budget.elapsed():.1f} s")
    report.section = ""
    summary = report.summary() | {"seconds": round(time.monotonic() - started, 1)}
    failed = [c for c in report.checks if not c["ok"]]
    report.say(
        f"{len(report.checks)} checks, {len(failed)} failed, {len(report.skipped)} skipped; "
        f"{summary['seconds']:.0f} s in all"
    )
    if out is not None:
        out.write_text(json.dumps(summary, indent=2, default=str))
        report.say(f"summary written to {out}")
    return 0 if not failed else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the JSON summary here")
    p.add_argument("--dry-run", action="store_true", help="everything but CUDA, on the CPU, at tiny sizes")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--keras-worker", choices=tuple(KERAS_BACKENDS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.keras_worker:
        result = keras_worker(args.keras_worker, args.model, args.size, args.batch, args.steps)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := [s for s in sections if s not in SECTIONS]:
        p.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    return run_suite(sections, args.dry_run, args.out)


if __name__ == "__main__":
    sys.exit(main())
