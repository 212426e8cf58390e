"""Training images/s with 1 process versus N data-parallel processes (torchrun, gloo) on this machine.

Both runs train the same model on the same generated images with the same global batch, so the
only difference is the process count; the figure is the median images/s over the epochs after
the first (which pays for decoding and warm-up). On a machine whose cores one process already
keeps busy (2 cores here), N processes cannot be faster: they split the same cores, each with
fewer threads, and add a gradient all-reduce per step. Data parallelism pays when each process
gets its own GPU or its own machine.

    python benchmarks/ddp_scaling.py                         # resnet50 at 128 px, 2 processes
    python benchmarks/ddp_scaling.py --model resnet20_cifar --image-size 32 --nproc 2
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from resnexus.engine.distributed import torchrun_command


def make_images(root: Path, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def run(nproc: int, args: argparse.Namespace, data: Path, out: Path) -> float:
    common = [
        "--data",
        str(data),
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--out",
        str(out),
        "--val-fraction",
        "0",
        "--test-fraction",
        "0.1",
        "--workers",
        "0",
        "--checkpoint-every",
        "1e9",
    ]
    if nproc == 1:
        command = [sys.executable, "-m", "resnexus", "train", *common]
    else:
        command = torchrun_command(nproc, ["train", *common])
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))  # the cores, shared out
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader((out / "history.csv").open()))
    per_epoch = [float(r["images_per_second"]) for r in rows[1:]]  # all processes together
    return statistics.median(per_epoch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (default 16)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=64, help="training images per class (default 64)")
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "data", args.images, args.image_size + 16)
        alone = run(1, args, data, Path(tmp) / "one")
        spread = run(args.nproc, args, data, Path(tmp) / "many")
    print(
        f"{args.model} at {args.image_size} px, global batch {args.batch_size}, {os.cpu_count()} CPU cores, "
        f"median over epochs 2..{args.epochs}:"
    )
    print(f"  1 process:            {alone:7.1f} images/s")
    print(f"  {args.nproc} processes (gloo):  {spread:7.1f} images/s   ratio {spread / alone:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
