"""Keras-on-TensorFlow against PyTorch: training and inference images/s of the same models, same settings.

For each model (resnext50_32x4d, resnet50v2, densenet121 by default) the resnexus PyTorch model and
its Keras twin (``resnexus.keras``, the same spec row; for ResNeXt also in the split + per-group
convolutions + concatenate form of the write-up's TensorFlow code) are timed at the same batch, input size,
precision (fp32) and thread count on random data: a training step is one SGD step (momentum 0.9)
of a cross-entropy loss on one batch, inference one batch in eval mode. After ``--warmup`` steps
(Keras's graph tracing / XLA compilation and oneDNN's kernel choice happen there) each of
``--steps`` steps is timed alone and the median is reported. Our Keras ResNet50V2 and
DenseNet-121 are also timed against ``keras.applications``' ResNet50V2 / DenseNet121 (random
weights, logits out) under the same protocol.

Every measurement runs in its own process, so each framework is started with the thread settings
(``torch.set_num_threads``; TensorFlow's intra-op pool = ``--threads``, inter-op pool 1, as PyTorch
runs one op at a time) and no framework shares a process with another. PyTorch runs channels_last,
as ``resnexus train`` does on CPUs; Keras compiles as ``model.compile`` does by default
(``jit_compile="auto"``, which Keras resolves to a plain tf.function graph, no XLA, on a machine
without an accelerator); both can be changed (``--torch-layout``, ``--keras-jit``).

    python benchmarks/keras_vs_torch.py                               # 224 px, batch 16, all cores
    python benchmarks/keras_vs_torch.py --size 64 --batch 4 --steps 2 # a quick check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
MODELS = ("resnext50_32x4d", "resnet50v2", "densenet121")
KERAS_APPLICATIONS = {"resnet50v2": "ResNet50V2", "densenet121": "DenseNet121"}
KERAS_KINDS = ("keras", "keras-split", "keras-applications")  # ours (grouped conv), ours (split form), Keras's
RESULT_TAG = "RESULT "  # a worker's last line: RESULT {json}


def timed(step: Callable[[], object], warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


# -- workers: one framework, one model, in a process of their own ---------------------------------------
def torch_worker(args: argparse.Namespace) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    import resnexus

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last if args.torch_layout == "channels_last" else torch.contiguous_format
    model = resnexus.create_model(args.model, num_classes=args.classes).to(memory_format=layout)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=layout)
    y = torch.randint(0, args.classes, (args.batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    model.train()
    train = timed(train_step, args.warmup, args.steps)
    model.eval()
    infer_times = timed(infer, args.warmup, args.steps)
    params = sum(p.numel() for p in model.parameters())
    return {"train_s": train, "infer_s": infer_times, "params": params, "setting": args.torch_layout}


def keras_worker(args: argparse.Namespace) -> dict[str, object]:
    # resnexus.keras before TensorFlow: it loads torchvision first, the order that does not crash.
    # Imported for keras.applications too, so both Keras measurements run in the same process state.
    import numpy as np

    from resnexus import keras as rk

    # isort: off
    import tensorflow as tf

    # isort: on
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, 3)
    if args.framework == "keras-applications":
        build = getattr(keras.applications, KERAS_APPLICATIONS[args.model])
        model = build(weights=None, input_shape=shape, classes=args.classes, classifier_activation=None)
    else:
        form = {"block_form": "split"} if args.framework == "keras-split" else {}
        model = rk.create_model(args.model, num_classes=args.classes, input_shape=shape, **form)
    jit = {"auto": "auto", "on": True, "off": False}[args.keras_jit]
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *shape), dtype=np.float32)
    y = rng.integers(0, args.classes, args.batch)
    train = timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
    infer_times = timed(lambda: model.predict_on_batch(x), args.warmup, args.steps)
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {"train_s": train, "infer_s": infer_times, "params": params, "setting": f"jit_compile={model.jit_compile}"}


def run_worker(args: argparse.Namespace) -> None:
    result = torch_worker(args) if args.framework == "torch" else keras_worker(args)
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the driver --------------------------------------------------------------------------------------
def measure(framework: str, model: str, args: argparse.Namespace) -> dict[str, object]:
    """One worker process; its images/s (median step) or the error it ended with."""
    command = [sys.executable, str(HERE), "--worker", framework, "--models", model]
    for flag in ("size", "batch", "steps", "warmup", "threads", "classes", "torch_layout", "keras_jit"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    threads = str(args.threads)
    env = os.environ | {
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    result = json.loads(lines[-1].removeprefix(RESULT_TAG))
    for mode in ("train", "infer"):
        result[f"{mode}_ips"] = args.batch / statistics.median(result[f"{mode}_s"])
    return result


def machine(threads: int) -> str:
    import torch

    try:
        amx = "yes" if torch.cpu._is_amx_tile_supported() else "no"
    except AttributeError:  # older PyTorch
        amx = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"torch {torch.__version__}"]
    for package in ("tensorflow", "tensorflow-cpu", "keras"):  # read without importing TensorFlow here
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")
    versions.append(f"TF_ENABLE_ONEDNN_OPTS={onednn}")
    return (
        f"machine: {cpu}, {os.cpu_count()} logical cores ({usable} usable), AMX tiles: {amx}; "
        f"{threads} threads per framework; {', '.join(versions)}"
    )


def figures(r: dict[str, object], mode: str) -> str:
    return "failed" if "error" in r else f"{r[f'{mode}_ips']:.2f}"


def ratio(a: dict[str, object], b: dict[str, object], mode: str) -> str:
    if "error" in a or "error" in b:
        return "-"
    return f"{a[f'{mode}_ips'] / b[f'{mode}_ips']:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, compilation)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: the usable cores")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--torch-layout", choices=("channels_last", "contiguous"), default="channels_last")
    p.add_argument("--keras-jit", choices=("auto", "on", "off"), default="auto", help="model.compile's jit_compile")
    p.add_argument("--no-applications", action="store_true", help="skip the keras.applications comparison")
    p.add_argument("--no-split", action="store_true", help="skip the Keras ResNeXt split + concatenate block form")
    p.add_argument("--worker", choices=("torch", *KERAS_KINDS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.framework, args.model = args.worker, args.models
        run_worker(args)
        return 0

    print(machine(args.threads))
    print(
        f"fp32, batch {args.batch}, {args.size} px, {args.classes} classes, SGD momentum 0.9; median of "
        f"{args.steps} timed steps after {args.warmup} warm-up steps; each measurement in its own process",
        flush=True,
    )
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    results: dict[tuple[str, str], dict[str, object]] = {}
    for name in names:
        frameworks = ["torch", "keras"]
        if name.startswith("resnext") and not args.no_split:  # the write-up's TensorFlow form of the block
            frameworks.append("keras-split")
        if name in KERAS_APPLICATIONS and not args.no_applications:
            frameworks.append("keras-applications")
        for framework in frameworks:
            r = results[name, framework] = measure(framework, name, args)
            detail = r["error"] if "error" in r else f"{r['params']:,} params, {r['setting']}"
            print(
                f"  {name:18s} {framework:19s} train {figures(r, 'train'):>8s} img/s   "
                f"inference {figures(r, 'infer'):>8s} img/s   ({detail})",
                flush=True,
            )

    print("\n| model | train img/s: Keras (TF) / PyTorch | ratio | inference img/s: Keras (TF) / PyTorch | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        k, t = results[name, "keras"], results[name, "torch"]
        print(
            f"| {name} | {figures(k, 'train')} / {figures(t, 'train')} | {ratio(k, t, 'train')} "
            f"| {figures(k, 'infer')} / {figures(t, 'infer')} | {ratio(k, t, 'infer')} |"
        )
        if (name, "keras-split") in results:
            k = results[name, "keras-split"]
            print(
                f"| {name}, Keras split + concatenate form | {figures(k, 'train')} / {figures(t, 'train')} "
                f"| {ratio(k, t, 'train')} | {figures(k, 'infer')} / {figures(t, 'infer')} | {ratio(k, t, 'infer')} |"
            )
    apps = [n for n in names if (n, "keras-applications") in results]
    if apps:
        print(
            "\n| model | train img/s: resnexus.keras / keras.applications | ratio "
            "| inference img/s: resnexus.keras / keras.applications | ratio | params: ours / theirs |"
        )
        print("|---|---:|---:|---:|---:|---|")
        for name in apps:
            ours, theirs = results[name, "keras"], results[name, "keras-applications"]
            params = "-" if "error" in ours or "error" in theirs else f"{ours['params']:,} / {theirs['params']:,}"
            print(
                f"| {name} vs {KERAS_APPLICATIONS[name]} | {figures(ours, 'train')} / {figures(theirs, 'train')} "
                f"| {ratio(ours, theirs, 'train')} | {figures(ours, 'infer')} / {figures(theirs, 'infer')} "
                f"| {ratio(ours, theirs, 'infer')} | {params} |"
            )
    print("ratios > 1: the first framework is faster")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
