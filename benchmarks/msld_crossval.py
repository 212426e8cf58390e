"""Patient-grouped K-fold cross-validation on the MSLD monkeypox photos, beside the paper's number.

Ali et al. (2022, arXiv 2207.03342) report 82.96 % (± 4.57) 3-fold accuracy for an
ImageNet-pretrained ResNet50 with augmented training data. This script trains a model FROM
SCRATCH (no pretrained weights), with resnexus's default recipe unless flags say otherwise, on
the MSLD sample in shared/data/msld, with every patient's
photos on one side of each fold (group_by "patient"), and prints mean ± std accuracy and macro F1
over the folds, the paper's figure and the wall time. Per-fold runs, cv_metrics.json and
cv_report.md go to --out.

    python benchmarks/msld_crossval.py                                   # resnext50_32x4d, 3 folds
    python benchmarks/msld_crossval.py --model resnet20_cifar --image-size 32 --epochs 1   # smoke test

Not a test: the default settings train three ResNeXt-50s and take a long time on a CPU.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from resnexus.engine import TrainConfig
from resnexus.engine.config import complete_config, unused_path
from resnexus.engine.crossval import cross_validate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "msld").resolve()
PAPER = {"model": "ResNet50, ImageNet-pretrained, augmented data", "accuracy": 82.96, "accuracy_std": 4.57}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"MSLD class-folder tree (default {DEFAULT_DATA})")
    p.add_argument("--model", default="resnext50_32x4d", help="registry name (default resnext50_32x4d)")
    p.add_argument("--epochs", type=int, help="default: the package's default recipe (90)")
    p.add_argument("--image-size", type=int, help="default: the package's default (128 px for resnext50)")
    p.add_argument("--batch-size", type=int, help="default: the package's default (16)")
    p.add_argument("--folds", type=int, default=3, help="default 3 (the paper's)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.125,
        help="validation share of each fold's training part (default 0.125: ~70:10:20 overall)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--out", help="run directory (default runs/msld-cv-<model>[-N] in the repository)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else unused_path(REPO / "runs" / f"msld-cv-{args.model}")
    config = complete_config(
        TrainConfig(
            data=args.data,
            out=str(out),
            model=args.model,
            epochs=args.epochs,
            image_size=args.image_size,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            group_by="patient",
            seed=args.seed,
            precision=args.precision,
            verbose=not args.quiet,
        )
    )
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(
        f"MSLD {args.folds}-fold patient-grouped cross-validation: {args.model} from scratch, {config.epochs} epochs, "
        f"{config.image_size} px, batch {config.batch_size}, {config.optimizer} lr {config.lr} wd {config.weight_decay}, "
        f"seed {args.seed}, on {device}"
    )
    started = time.perf_counter()
    result = cross_validate(config, args.folds)
    wall = time.perf_counter() - started

    def pct(key: str) -> str:
        std = result.std.get(key)
        return f"{100 * result.mean[key]:.2f} ± " + ("n/a" if std is None else f"{100 * std:.2f}") + " %"

    rows = [
        (f"ours: {args.model}, from scratch", pct("accuracy"), pct("macro_f1")),
        (f"paper: {PAPER['model']}", f"{PAPER['accuracy']:.2f} ± {PAPER['accuracy_std']:.2f} %", "n/a"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}s}  {'accuracy':>16s}  {'macro F1':>16s}")
    for name, acc, f1 in rows:
        print(f"{name:{width}s}  {acc:>16s}  {f1:>16s}")
    per_fold = ", ".join(f"{100 * f['accuracy']:.2f}" for f in result.folds)
    print(f"per-fold accuracy (%): {per_fold}; std is the sample std over folds (ddof=1)")
    print(f"wall time: {wall:.1f} s ({wall / 60:.1f} min); report: {result.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
