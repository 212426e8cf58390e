"""`train --folds K --jobs N`: fold runs side by side in single-threaded processes against the same
runs one after another with every thread, on this machine, in one run.

Writes a two-class folder of random 128 px photos-to-be (sizes as MSLD's: 224 px JPEG-like PNGs),
then times ``cross_validate`` (resnet18, 128 px, no refit) twice on the same folds: ``--jobs 1``
with all of the process's threads, and ``--jobs N`` (N = the thread count) with one thread each.
Prints each wall time per round and the median ratio: how much sooner the same runs finish.

    python benchmarks/cv_jobs.py [--images 48] [--epochs 3] [--folds 2] [--rounds 3]

Not a test: it times training.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnexus.engine import TrainConfig, cross_validate


def folder(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 200, (224, 224, 3)) + 40 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"p{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images per class (default 48)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    amx = torch.cpu._is_amx_tile_supported() if hasattr(torch.cpu, "_is_amx_tile_supported") else False
    print(
        f"{platform.processor() or platform.machine()}, {threads} threads, AMX: {amx}; {args.model} 128 px fp32, "
        f"{args.folds} folds x {args.epochs} epochs of {2 * args.images * (args.folds - 1) // args.folds} images"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = folder(Path(tmp) / "data", args.images)
        times: dict[int, list[float]] = {1: [], threads: []}
        for r in range(args.rounds):
            for jobs in (1, threads):
                config = TrainConfig(
                    data=str(data),
                    out=str(Path(tmp) / f"r{r}j{jobs}"),
                    model=args.model,
                    image_size=128,
                    epochs=args.epochs,
                    precision="fp32",
                    val_fraction=0.0,
                    verbose=False,
                    cache_dir=str(Path(tmp) / "cache"),
                )
                started = time.perf_counter()
                cross_validate(config, args.folds, refit=False, jobs=jobs)
                times[jobs].append(time.perf_counter() - started)
                print(f"round {r + 1}: --jobs {jobs}: {times[jobs][-1]:.1f} s", flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[threads])
    print(
        f"median: --jobs 1 ({threads} threads) {one:.1f} s, --jobs {threads} (1 thread each) {many:.1f} s: "
        f"{one / many:.2f}x sooner side by side"
    )


if __name__ == "__main__":
    main()
