"""``resnexus train --framework keras`` against ``--framework torch``: the same command, the same photos.

Runs ``resnexus train`` on both frameworks with nothing else changed, ``--rounds`` times with the
sides alternating (round 1: torch then keras; round 2: keras then torch; ...), each in a fresh
process as a user runs it. From each run's history.csv it reads the last epoch's images/s (the
training speed once everything is warm) and the start-up: the first epoch's seconds beyond a later
epoch's (imports excluded: the run's clock starts when training does; model building, the first
steps' kernel choice and, for Keras, its first-step set-up are in it). It prints each run, then the
median Keras / PyTorch ratio of the last epoch's images/s over the rounds.

    python benchmarks/keras_train_speed.py --data ../shared/data/msld --image-size 96 --epochs 3 --rounds 2
    python benchmarks/keras_train_speed.py --data DIR --model resnet20_cifar --image-size 32 --epochs 2 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
FRAMEWORKS = ("torch", "keras")


def read_history(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run: every epoch's seconds, the last epoch's images/s and the
    start-up (the first epoch's seconds minus the median of the later ones; 0 for a one-epoch run)."""
    path = run_dir / "history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no history (see its log beside it)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no epochs")
    seconds = [float(r["seconds"]) for r in rows]
    later = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "epoch_seconds": seconds,
        "last_images_per_second": float(rows[-1]["images_per_second"]),
        "startup_seconds": max(0.0, seconds[0] - later),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round the Keras / PyTorch ratio of the last epoch's images/s; their median; each side's
    median start-up. ``runs``: dicts with ``round``, ``framework`` and :func:`read_history`'s figures."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["framework"]] = run
    ratios = [
        r["keras"]["last_images_per_second"] / r["torch"]["last_images_per_second"]
        for _, r in sorted(by_round.items())
        if set(r) == set(FRAMEWORKS)
    ]
    startup = {
        f: statistics.median(run["startup_seconds"] for run in runs if run["framework"] == f)
        for f in FRAMEWORKS
        if any(run["framework"] == f for run in runs)
    }
    return {
        "ratios": ratios,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "median_startup_seconds": startup,
    }


def train(framework: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One ``resnexus train`` in a fresh process; its log goes beside the run directory."""
    command = [sys.executable, "-m", "resnexus", "train", "--data", str(args.data), "--model", args.model]
    command += ["--epochs", str(args.epochs), "--framework", framework, "--out", str(out), "--seed", "0"]
    if args.image_size:
        command += ["--image-size", str(args.image_size)]
    command += args.extra
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        done = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONWARNINGS": "ignore"}
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: see {out.parent / (out.name + '.log')}")
    return read_history(out) | {"process_seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a folder of class folders")
    p.add_argument("--out", type=Path, default=Path("runs/keras_train_speed"), help="where the runs go (replaced)")
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs, the sides alternating")
    p.add_argument("extra", nargs="*", help="more train options, after --, for both sides")
    args = p.parse_args(argv)
    from resnexus.engine.runtime import cpu_model

    print(f"{cpu_model()}; resnexus train --model {args.model} --image-size {args.image_size} --epochs {args.epochs}")
    runs = []
    for round_ in range(1, args.rounds + 1):
        order = FRAMEWORKS if round_ % 2 else FRAMEWORKS[::-1]
        for framework in order:
            figures = train(framework, args, args.out / f"round{round_}_{framework}")
            runs.append({"round": round_, "framework": framework, **figures})
            epochs = " / ".join(f"{s:.1f}" for s in figures["epoch_seconds"])
            print(
                f"round {round_} {framework:5s}: epochs {epochs} s; last epoch {figures['last_images_per_second']:.2f} "
                f"img/s; start-up {figures['startup_seconds']:.1f} s; process {figures['process_seconds']:.0f} s",
                flush=True,
            )
    summary = summarise(runs)
    ratios = ", ".join(f"{r:.2f}" for r in summary["ratios"])
    print(f"Keras / PyTorch, last epoch's images/s: {ratios} (median {summary['median_ratio']:.2f})")
    startup = summary["median_startup_seconds"]
    print("median start-up: " + ", ".join(f"{f} {s:.1f} s" for f, s in startup.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keras_train_speed.json").write_text(json.dumps({"runs": runs, **summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
