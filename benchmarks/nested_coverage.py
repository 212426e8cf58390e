"""The whole recipe, nested: do the deployable model's prediction sets cover patients no part of the run saw?

For each outer fold of a patient-grouped K-fold split, this runs what a user runs on the other
folds (``resnexus train --folds K_INNER --group-by patient``: fold models, out-of-fold calibration,
the refit on every image), then ``predict --coverage C`` with that run's refit model on the outer
fold's photos, and counts how often the set holds the true class and how large it is. Every photo
is predicted once, by a run that never saw its patient; the figures are pooled over the photos.

``benchmarks/heldout_coverage.py`` measures the conformal step alone from one run's out-of-fold
predictions (minutes); this measures the deployed model's sets (OUTER x (K_INNER + 1) trainings:
hours on a CPU, minutes on a GPU).

    python benchmarks/nested_coverage.py --data ../shared/data/msld --out runs/nested          # the recommended recipe
    python benchmarks/nested_coverage.py --data DIR --out runs/x --epochs 1 --image-size 32 --model resnet20_cifar
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from resnexus.data import kfold_splits, scan_dataset
from resnexus.engine import TrainConfig
from resnexus.engine.checkpoint import Checkpoint
from resnexus.engine.crossval import cross_validate
from resnexus.engine.inference import predict_probabilities
from resnexus.engine.rundir import RunDir
from resnexus.engine.runtime import cpu_model
from resnexus.reports.intervals import wilson_interval
from resnexus.reports.uncertainty import judge

COVERAGES = (0.8, 0.9, 0.95)


def copy_images(paths: list[Path], labels: list[int], names: list[str], folder: Path) -> None:
    """The images into class folders under ``folder``, file names kept (they carry the patient id)."""
    for path, label in zip(paths, labels):
        target = folder / names[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def outer_fold(args: argparse.Namespace, k: int, train_idx: list[int], test_idx: list[int], samples: Any) -> dict:
    """Train the recipe on the outer training part (resumable: a finished run is kept) and return
    the outer test photos' true labels and the refit model's raw probabilities, in one dict."""
    where = args.out / f"outer{k}"
    run = where / "run"
    names = list(samples.class_names)
    if not RunDir(run).refit.best().is_file():
        shutil.rmtree(where, ignore_errors=True)
        copy_images(
            [samples.paths[i] for i in train_idx], [samples.labels[i] for i in train_idx], names, where / "data"
        )
        config = TrainConfig(
            data=str(where / "data"),
            out=str(run),
            model=args.model,
            epochs=args.epochs,
            image_size=args.image_size,
            group_by=args.group_by,
            seed=args.seed,
            verbose=False,
        )
        cross_validate(config, folds=args.inner, refit=True, jobs=args.jobs)
    test = where / "test"
    shutil.rmtree(test, ignore_errors=True)
    copy_images([samples.paths[i] for i in test_idx], [samples.labels[i] for i in test_idx], names, test)
    paths, probs, classes = predict_probabilities(run, test)
    truth = [classes.index(p.parent.name) for p in paths]
    return {"labels": truth, "probs": probs.tolist(), "run": str(run)}


def pooled(folds: list[dict], class_names: list[str]) -> dict[str, Any]:
    """Coverage, per-class coverage and mean set size of the refit models' sets, over every photo."""
    figures: dict[str, Any] = {}
    for coverage in COVERAGES:
        for per_class in (False, True):
            covered, sizes, labels = [], [], []
            for fold in folds:
                calibration = Checkpoint.load(fold["run"]).calibration
                judged = judge(np.array(fold["probs"]), calibration, coverage, per_class)
                assert judged.sets is not None
                y = np.array(fold["labels"])
                covered.append(judged.sets[np.arange(len(y)), y])
                sizes.append(judged.sets.sum(axis=1))
                labels.append(y)
            hit, size, y = np.concatenate(covered), np.concatenate(sizes), np.concatenate(labels)
            se = float(np.sqrt(hit.mean() * (1 - hit.mean()) / len(hit)))
            figures[f"{coverage:g}{' per class' if per_class else ''}"] = {
                "coverage": float(hit.mean()),
                "coverage_se": se,
                "mean_set_size": float(size.mean()),
                "per_class": {n: float(hit[y == i].mean()) for i, n in enumerate(class_names) if (y == i).any()},
            }
    return figures


def deployed_accuracy(folds: list[dict]) -> dict[str, Any]:
    """How often the refit models' answers (calibrated, at the run's operating threshold: what
    ``predict`` prints) are right on the outer photos, with its Wilson 95 % interval."""
    right = []
    for fold in folds:
        judged = judge(np.array(fold["probs"]), Checkpoint.load(fold["run"]).calibration)
        right.append(judged.labels == np.array(fold["labels"]))
    hits = np.concatenate(right)
    ci = wilson_interval(int(hits.sum()), len(hits))
    return {"accuracy": float(hits.mean()), "accuracy_ci": None if ci is None else list(ci), "photos": len(hits)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="class folders whose file names carry the patient id")
    p.add_argument("--out", type=Path, required=True, help="folder for every run (kept, so a stopped run resumes)")
    p.add_argument("--outer", type=int, default=5, help="outer patient-grouped folds (default 5)")
    p.add_argument("--inner", type=int, default=5, help="the recipe's own --folds (default 5)")
    p.add_argument("--model", default="resnet18", help="default resnet18 (the recommended offline recipe)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--group-by", default="patient")
    p.add_argument("--jobs", type=int, default=1, help="the inner runs side by side (train --jobs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    samples = scan_dataset(args.data, group_by=args.group_by)
    folds = [outer_fold(args, k + 1, tr, te, samples) for k, (tr, te) in enumerate(kfold_splits(samples, args.outer))]
    figures = pooled(folds, list(samples.class_names))
    accuracy = deployed_accuracy(folds)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"{len(samples)} photos, {args.outer} outer x ({args.inner} inner folds + refit) runs of {args.model}, "
        f"{args.epochs} epochs; {cpu_model()}; {minutes:.0f} min"
    )
    for key, row in figures.items():
        per_class = ", ".join(f"{n} {v:.3f}" for n, v in row["per_class"].items())
        print(
            f"{key:>15}: {row['coverage']:.3f} ± {row['coverage_se']:.3f} of the sets hold the true class, "
            f"mean size {row['mean_set_size']:.2f} ({per_class})"
        )
    low, high = accuracy["accuracy_ci"] or (float("nan"), float("nan"))
    print(
        f"the refit models' answers on the outer photos: accuracy {accuracy['accuracy']:.3f} (95 % CI {low:.3f}-{high:.3f})"
    )
    record = {"figures": figures, "deployed": accuracy, "minutes": minutes}
    (args.out / "nested_coverage.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
