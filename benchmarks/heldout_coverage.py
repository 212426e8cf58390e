"""Do the prediction sets of a cross-validated run cover new patients at the rate they promise?

``train --folds K`` calibrates its sets on every image's out-of-fold probability, so the
coverage it reports on those same images checks only the arithmetic. This script asks the honest
question with the images a run already has: it splits the **patients** of a run's
``oof_predictions.csv`` into K groups (stratified, grouped: scikit-learn's StratifiedGroupKFold),
fits the calibration on K-1 of them exactly as ``train --folds`` does (temperature scaling,
conformal scores, :func:`resnexus.reports.uncertainty.fit_calibration`), and measures on the held-out
patients how often the set holds the true class and how large it is; the split is repeated with
fresh seeds and the figures are pooled.

What it measures is the conformal step on patients the calibration never saw, with the fold models'
probabilities. The deployable refit model is trained on every image and cannot be tested on
photos it has seen; its sets use the same threshold.

    python benchmarks/heldout_coverage.py runs/lesions                      # a train --folds K run
    python benchmarks/heldout_coverage.py runs/lesions --repeats 50 --json coverage.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from resnexus.data.scan import group_ids
from resnexus.engine.rundir import RunDir
from resnexus.engine.runtime import cpu_model
from resnexus.reports.uncertainty import fit_calibration, judge

COVERAGES = (0.8, 0.9, 0.95)


def read_oof(run_dir: Path, group_by: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(class names, probabilities, labels, group ids) of a run's oof_predictions.csv."""
    path = RunDir(run_dir).oof_predictions
    if not path.is_file():
        raise SystemExit(f"{path} not found: give a `train --folds K` run (or run `resnexus calibrate {run_dir}`)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = [c.removeprefix("prob_") for c in rows[0] if c.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    labels = np.array([names.index(r["true_label"]) for r in rows])
    groups = [r["group"] for r in rows] if "group" in rows[0] else group_ids([Path(r["path"]) for r in rows], group_by)
    return names, probs, labels, groups


def held_out_figures(
    names: list[str], probs: np.ndarray, labels: np.ndarray, groups: list[str], folds: int, repeats: int
) -> dict[str, Any]:
    """Per coverage and per set kind (one threshold, one per class): the mean over repeats of the
    held-out coverage, overall and per class, and of the mean set size, with their spread."""
    per: dict[str, dict[str, list[Any]]] = {}
    for seed in range(repeats):
        covered: dict[str, np.ndarray] = {}
        size: dict[str, np.ndarray] = {}
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fit_idx, test_idx in splitter.split(probs, labels, groups):
            record = fit_calibration(probs[fit_idx], labels[fit_idx], names)
            for coverage in COVERAGES:
                for per_class in (False, True):
                    key = f"{coverage:g}{' per class' if per_class else ''}"
                    sets = judge(probs[test_idx], record, coverage=coverage, per_class=per_class).sets
                    assert sets is not None
                    covered.setdefault(key, np.zeros(len(probs)))[test_idx] = sets[
                        np.arange(len(test_idx)), labels[test_idx]
                    ]
                    size.setdefault(key, np.zeros(len(probs)))[test_idx] = sets.sum(axis=1)
        for key in covered:
            row = per.setdefault(key, {"coverage": [], "size": [], "singletons": [], **{n: [] for n in names}})
            row["coverage"].append(covered[key].mean())
            row["size"].append(size[key].mean())
            row["singletons"].append((size[key] == 1).mean())
            for k, n in enumerate(names):
                row[n].append(covered[key][labels == k].mean())
    return {
        key: {stat: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None] for stat, v in row.items()}
        for key, row in per.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a `resnexus train --folds K` run directory")
    p.add_argument("--folds", type=int, default=5, help="patient groups held out in turn (default 5)")
    p.add_argument("--repeats", type=int, default=50, help="fresh patient splits (default 50)")
    p.add_argument("--group-by", default="patient", help="the grouping rule of the run (default patient)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    names, probs, labels, groups = read_oof(args.run_dir, args.group_by)
    figures = held_out_figures(names, probs, labels, groups, args.folds, args.repeats)
    print(
        f"{len(labels)} out-of-fold images, {len(set(groups))} patients, classes {names}; calibration fitted on "
        f"{args.folds - 1}/{args.folds} of the patients, measured on the rest; {args.repeats} repeats "
        f"({cpu_model()})"
    )
    print(f"{'asked':>16} | {'held-out coverage':>17} | {'mean set size':>13} | {'one class':>9} | per class coverage")
    for key, row in figures.items():
        per_class = ", ".join(f"{n} {row[n][0]:.3f}" for n in names)
        print(
            f"{key:>16} | {row['coverage'][0]:.3f} (sd {row['coverage'][1]:.3f}) | {row['size'][0]:13.2f} | "
            f"{row['singletons'][0]:9.2f} | {per_class}"
        )
    if args.json:
        args.json.write_text(json.dumps({"images": len(labels), "repeats": args.repeats, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
