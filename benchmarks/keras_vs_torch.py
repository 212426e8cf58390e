"""Keras (on each installed backend: TensorFlow, JAX, torch) against PyTorch: training and inference
images/s of the same models, same settings, and each side's start-up (the first step: tracing).

For each model (resnext50_32x4d, resnet50v2, densenet121 by default) the resnexus PyTorch model and
its Keras twin (``resnexus.keras``, the same spec row; for ResNeXt also in the split + per-group
convolutions + concatenate form of the write-up's TensorFlow code) are timed at the same batch, input size,
precision (fp32) and thread count on random data: a training step is one SGD step (momentum 0.9)
of a cross-entropy loss on one batch, inference one batch in eval mode. After ``--warmup`` steps
(Keras's graph tracing / XLA compilation and oneDNN's kernel choice happen there) each of
``--steps`` steps is timed alone and the median is reported. Our Keras ResNet50V2 and
DenseNet-121 are also timed against ``keras.applications``' ResNet50V2 / DenseNet121 (random
weights, logits out) under the same protocol.

Keras runs on every backend of ``--backends`` (default: those installed), each in a process
whose ``KERAS_BACKEND`` is set before Keras is imported. On the torch backend our models run
PyTorch's channels-last kernels (``resnexus.keras.torch_kernels``); the row "Keras' own kernels"
times the same model rebuilt by Keras from its config, with Keras' own layer code, for the gain. ``--rounds N`` repeats every measurement
N times, the sides alternating within a round (PyTorch, then each Keras backend, then PyTorch...),
and reports medians over rounds: fair when other jobs share the cores. The first training step
(graph tracing / compilation and kernel choice) is reported as the start-up.

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
# ours (grouped conv), ours (split form), ours with Keras' own layer code on its torch backend (none of
# resnexus.keras.torch_kernels' PyTorch kernels), keras.applications' twin
KERAS_KINDS = ("keras", "keras-split", "keras-own-kernels", "keras-applications")
BACKENDS = ("tensorflow", "jax", "torch")
RESULT_TAG = "RESULT "  # a worker's last line: RESULT {json}


def timed(step: Callable[[], object], warmup: int, steps: int, first: list[float] | None = None) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones; the first call's
    seconds (tracing, compilation) are appended to ``first`` when given."""
    for i in range(warmup):
        start = time.perf_counter()
        step()
        if i == 0 and first is not None:
            first.append(time.perf_counter() - start)
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
    first: list[float] = []
    train = timed(train_step, args.warmup, args.steps, first)
    model.eval()
    infer_times = timed(infer, args.warmup, args.steps)
    params = sum(p.numel() for p in model.parameters())
    setting = args.torch_layout
    return {"train_s": train, "infer_s": infer_times, "params": params, "setting": setting, "first_s": first[0]}


def keras_worker(args: argparse.Namespace) -> dict[str, object]:
    # resnexus.keras before TensorFlow: it loads torchvision first, the order that does not crash.
    # Imported for keras.applications too, so both Keras measurements run in the same process state.
    import numpy as np

    from resnexus import keras as rk

    # isort: off
    import keras

    # isort: on
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)

    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, 3)
    if args.framework == "keras-applications":
        build = getattr(keras.applications, KERAS_APPLICATIONS[args.model])
        model = build(weights=None, input_shape=shape, classes=args.classes, classifier_activation=None)
    else:
        form = {"block_form": "split"} if args.framework == "keras-split" else {}
        model = rk.create_model(args.model, num_classes=args.classes, input_shape=shape, **form)
        if args.framework == "keras-own-kernels":  # rebuilt by Keras from the config: its own layers' code
            model = keras.Model.from_config(model.get_config())
    jit = {"auto": "auto", "on": True, "off": False}[args.keras_jit]
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *shape), dtype=np.float32)
    y = rng.integers(0, args.classes, args.batch)
    first: list[float] = []
    train = timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps, first)
    infer_times = timed(lambda: model.predict_on_batch(x), args.warmup, args.steps)
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    setting = f"{keras.backend.backend()} backend, jit_compile={model.jit_compile}"
    return {"train_s": train, "infer_s": infer_times, "params": params, "setting": setting, "first_s": first[0]}


def run_worker(args: argparse.Namespace) -> None:
    result = torch_worker(args) if args.framework == "torch" else keras_worker(args)
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the driver --------------------------------------------------------------------------------------
def measure(kind: str, model: str, args: argparse.Namespace) -> dict[str, object]:
    """One worker process; its images/s (median step) or the error it ended with. ``kind`` is
    ``torch`` or ``BACKEND:KIND`` (``torch:keras-split``: our split-form Keras model on Keras' torch backend)."""
    backend, _, framework = kind.rpartition(":")
    command = [sys.executable, str(HERE), "--worker", framework, "--models", model]
    for flag in ("size", "batch", "steps", "warmup", "threads", "classes", "torch_layout", "keras_jit"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    threads = str(args.threads)
    env = os.environ | {
        "KERAS_BACKEND": backend or "tensorflow",
        "JAX_PLATFORMS": "cpu",
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
    if "error" in r:
        return "failed"
    return f"{r['first_s']:.1f}" if mode == "first" else f"{r[f'{mode}_ips']:.2f}"


def installed_backends() -> list[str]:
    """The Keras backends whose package is installed (found without importing it)."""
    import importlib.util

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def median_result(rounds: list[dict[str, object]]) -> dict[str, object]:
    """The medians over rounds of a measurement's images/s and start-up (an error if any round failed)."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    out = dict(rounds[-1])
    for key in ("train_ips", "infer_ips", "first_s"):
        out[key] = statistics.median(float(r[key]) for r in rounds)
    return out


def ratio(a: dict[str, object], b: dict[str, object], mode: str) -> str:
    if "error" in a or "error" in b:
        return "-"
    return f"{a[f'{mode}_ips'] / b[f'{mode}_ips']:.2f}"


def kinds_for(name: str, backends: list[str], args: argparse.Namespace) -> list[str]:
    """What is measured for model ``name``: PyTorch, then our Keras model (and its split form for a
    ResNeXt) on each backend, and keras.applications' twin on TensorFlow."""
    kinds = ["torch"]
    for backend in backends:
        kinds.append(f"{backend}:keras")
        if name.startswith("resnext") and not args.no_split:  # the write-up's TensorFlow form of the block
            kinds.append(f"{backend}:keras-split")
        if backend == "torch":  # what resnexus.keras.torch_kernels gains over Keras' own torch code
            kinds.append("torch:keras-own-kernels")
    if name in KERAS_APPLICATIONS and not args.no_applications and "tensorflow" in backends:
        kinds.append("tensorflow:keras-applications")
    return kinds


def print_tables(names: list[str], results: dict[tuple[str, str], dict[str, object]], backends: list[str]) -> None:
    print(
        "\n| model | Keras backend (form) | train img/s: Keras / PyTorch | ratio | inference img/s: Keras / PyTorch "
        "| ratio | start-up s: Keras / PyTorch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        t = results[name, "torch"]
        for backend in backends:
            for kind, form in (
                ("keras", ""),
                ("keras-split", ", split form"),
                ("keras-own-kernels", ", Keras' own kernels"),
            ):
                if (name, f"{backend}:{kind}") not in results:
                    continue
                k = results[name, f"{backend}:{kind}"]
                print(
                    f"| {name} | {backend}{form} | {figures(k, 'train')} / {figures(t, 'train')} | {ratio(k, t, 'train')} "
                    f"| {figures(k, 'infer')} / {figures(t, 'infer')} | {ratio(k, t, 'infer')} "
                    f"| {figures(k, 'first')} / {figures(t, 'first')} |"
                )
    apps = [n for n in names if (n, "tensorflow:keras-applications") in results]
    if apps:
        print(
            "\n| model | train img/s: resnexus.keras / keras.applications (TensorFlow) | ratio "
            "| inference img/s: resnexus.keras / keras.applications | ratio | params: ours / theirs |"
        )
        print("|---|---:|---:|---:|---:|---|")
        for name in apps:
            ours, theirs = results[name, "tensorflow:keras"], results[name, "tensorflow:keras-applications"]
            params = "-" if "error" in ours or "error" in theirs else f"{ours['params']:,} / {theirs['params']:,}"
            print(
                f"| {name} vs {KERAS_APPLICATIONS[name]} | {figures(ours, 'train')} / {figures(theirs, 'train')} "
                f"| {ratio(ours, theirs, 'train')} | {figures(ours, 'infer')} / {figures(theirs, 'infer')} "
                f"| {ratio(ours, theirs, 'infer')} | {params} |"
            )
    print("ratios > 1: the first framework is faster")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, compilation)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: the usable cores")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--backends", default=None, help="comma-separated Keras backends (default: every installed one)")
    p.add_argument("--rounds", type=int, default=1, help="repeat each measurement, sides alternating; medians")
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

    backends = args.backends.split(",") if args.backends else installed_backends()
    print(machine(args.threads))
    print(
        f"fp32, batch {args.batch}, {args.size} px, {args.classes} classes, SGD momentum 0.9; median of "
        f"{args.steps} timed steps after {args.warmup} warm-up steps; each measurement in its own process; "
        f"Keras backends: {', '.join(backends)}; {args.rounds} round(s), sides alternating, medians over rounds",
        flush=True,
    )
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rounds: dict[tuple[str, str], list[dict[str, object]]] = {}
    for name in names:
        kinds = kinds_for(name, backends, args)
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:  # the sides alternate between rounds
                r = measure(kind, name, args)
                rounds.setdefault((name, kind), []).append(r)
                detail = r["error"] if "error" in r else f"{r['params']:,} params, {r['setting']}"
                print(
                    f"  round {round_ + 1} {name:18s} {kind:30s} train {figures(r, 'train'):>8s} img/s   "
                    f"inference {figures(r, 'infer'):>8s} img/s   start-up {figures(r, 'first'):>6s} s   ({detail})",
                    flush=True,
                )
    results = {key: median_result(rs) for key, rs in rounds.items()}
    print_tables(names, results, backends)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
