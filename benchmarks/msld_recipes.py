"""Recipe research on the MSLD photos: repeated, patient-grouped, stratified K-fold CV, paired.

Every recipe is trained on exactly the same splits (repeat r uses fold seed r), so two recipes
can be compared fold run by fold run (a paired difference) instead of by two noisy means. Each
fold run trains on all K-1 training folds (no validation images: on 150 photos, choosing an epoch
by 13 validation images picks noise, so the final weights are used) and is tested on the
held-out fold, with and without flip TTA. One JSON line per fold run goes to
``OUT/results.jsonl`` (per-image probabilities included), so an interrupted sweep continues
where it stopped and new recipes can be added later on the same splits.

    python benchmarks/msld_recipes.py run --recipes default,r18_96 --repeats 3 --folds 5 --jobs 2
    python benchmarks/msld_recipes.py table --baseline default        # the table, Markdown
    python benchmarks/msld_recipes.py list                            # the recipes and their overrides
    python benchmarks/msld_recipes.py colour --repeats 5              # colour histograms: the floor
    python benchmarks/msld_recipes.py ensemble --recipes default,r18_128   # averaging recorded models
    python benchmarks/msld_recipes.py testsize --recipe default        # kept weights at other test sizes
    python benchmarks/msld_recipes.py models --recipes default,r18_128   # accuracy, F1, AUC, params, MACs, speed
    python benchmarks/msld_recipes.py nested --recipe r18_128_e40      # fold ensemble vs refit, nested CV

Standard errors: over n = repeats x folds fold runs, the plain SE (s / sqrt(n)) understates the
uncertainty because the fold runs share training images; the table gives the corrected SE of
Nadeau & Bengio (2003) for repeated K-fold, sqrt((1/n + n_test/n_train) * s^2), on both the
accuracy and the paired difference against the baseline. ``jobs`` single-threaded processes run
side by side.

Not a test: a full sweep trains hundreds of models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "msld").resolve()
DEFAULT_OUT = REPO / "runs" / "msld-recipes"

# name: (TrainConfig overrides, AugmentConfig overrides). "default" is the package's default recipe
# for a user's folder as it was before this research (resnext50_32x4d, 128 px, 90 epochs, AdamW
# lr 1e-3, wd 0.05, crop scale 0.35-1, flip, colour jitter 0.2, Random Erasing 0.25). The
# screening proxies change one thing at a time from a cheap base (resnet18, 64 px, 60 epochs).
AUGMENT_FIELDS = ("random_resized_crop_scale", "hflip", "vflip", "color_jitter", "random_erasing", "rotation")
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}


def recipe(name: str, **changes: Any) -> None:
    """Register a recipe; augmentation fields go to the AugmentConfig, the rest to the TrainConfig."""
    augment = {k: v for k, v in changes.items() if k in AUGMENT_FIELDS}
    RECIPES[name] = ({k: v for k, v in changes.items() if k not in AUGMENT_FIELDS}, augment)


def variants(base: str, **table: dict[str, Any]) -> None:
    """``base_suffix`` recipes: the base's changes plus each entry's."""
    overrides, augment = RECIPES[base]
    for suffix, changes in table.items():
        recipe(f"{base}_{suffix}", **{**overrides, **augment, **changes})


recipe("default")
recipe("default_e30", epochs=30)
recipe("r18_64", model="resnet18", image_size=64, epochs=60)
recipe("r18_96", model="resnet18", image_size=96, epochs=60)
recipe("r18_128", model="resnet18", image_size=128, epochs=60)
recipe("r26_64", model="resnet26", image_size=64, epochs=60)
recipe("r34_64", model="resnet34", image_size=64, epochs=60)
recipe("r50_64", model="resnet50", image_size=64, epochs=60)
recipe("rx50_64", model="resnext50_32x4d", image_size=64, epochs=60)
recipe("rx50_96", model="resnext50_32x4d", image_size=96, epochs=60)
recipe("densenet121_64", model="densenet121", image_size=64, epochs=60)
recipe("res2net50_64", model="res2net50_26w_4s", image_size=64, epochs=60)
recipe("resnet50v2_64", model="resnet50v2", image_size=64, epochs=60)
recipe("r20cifar_64", model="resnet20_cifar", image_size=64, epochs=60)
variants(
    "r18_64",
    e30=dict(epochs=30),
    e120=dict(epochs=120),
    e150=dict(epochs=150),
    bs8=dict(batch_size=8),
    crop60=dict(random_resized_crop_scale=(0.6, 1.0)),
    crop08=dict(random_resized_crop_scale=(0.08, 1.0)),
    noerase=dict(random_erasing=0.0),
    nojitter=dict(color_jitter=0.0),
    vflip_rot=dict(vflip=0.5, rotation=20.0),
    mixup=dict(mixup=0.2),
    cutmix=dict(cutmix=1.0),
    sgd=dict(optimizer="sgd", lr=0.05),
    lr3e3=dict(lr=3e-3),
    lr3e4=dict(lr=3e-4),
    wd0p3=dict(weight_decay=0.3),
    ema=dict(ema_decay=0.995),
    bs32=dict(batch_size=32),
    ls0=dict(label_smoothing=0.0),
)


# 128 px, where the default lives, from resnet18 at 128 px (it ties the default on repeat 0 at a fifth
# of the cost); e40 is the schedule that fits CV + refit into 30 minutes on 2 cores (`--jobs 2`).
variants(
    "r18_128",
    e40=dict(epochs=40),
    e90=dict(epochs=90),
    px160=dict(image_size=160),
    px192=dict(image_size=192),
    noerase=dict(random_erasing=0.0),
    crop08=dict(random_resized_crop_scale=(0.08, 1.0)),
    crop60=dict(random_resized_crop_scale=(0.6, 1.0)),
    mixup=dict(mixup=0.2),
    cutmix=dict(cutmix=1.0),
    sgd=dict(optimizer="sgd", lr=0.05),
    ema=dict(ema_decay=0.995),
)
# one change at a time from the recommended command's recipe (resnet18, 128 px, 40 epochs): the
# regularisers the issue names (Mixup, CutMix, Random Erasing, the crop scale), the optimiser, EMA
variants(
    "r18_128_e40",
    mixup=dict(mixup=0.2),
    cutmix=dict(cutmix=1.0),
    noerase=dict(random_erasing=0.0),
    crop08=dict(random_resized_crop_scale=(0.08, 1.0)),
    sgd=dict(optimizer="sgd", lr=0.05),
    ema=dict(ema_decay=0.995),  # its records predate the EMA warm-up (fit.ema_with_warmup): a plain EMA
    ema999=dict(ema_decay=0.999),  # with the warm-up
    crop08_mixup=dict(random_resized_crop_scale=(0.08, 1.0), mixup=0.2),  # the two best screens together
    seeds2=dict(seed_offset=1000),  # the same recipe, other training seeds: what retraining alone moves
    # input size: 64 -> 128 px was the one change that moved results (+10.7 points for ResNeXt-50 on
    # repeat 0); 160 px is about what still fits CV + refit into 30 minutes, 224 px is the photos' own size
    px160=dict(image_size=160),
    px224=dict(image_size=224),
    # a learning curve: the same recipe on a patient-grouped, stratified half / three quarters of each
    # fold run's training part (about 60 / 90 of its 120 photos), tested on the same held-out fold
    train_half=dict(train_share=1 / 2),
    train_3q=dict(train_share=3 / 4),
    # the rest of the issue's list: learning rate and weight decay (AdamW, default lr 1e-3, wd 0.05)
    # on either side, and Mixup / CutMix strengths other than 0.2 / 1.0
    lr3e3=dict(lr=3e-3),
    lr3e4=dict(lr=3e-4),
    wd5e4=dict(weight_decay=5e-4),
    wd0p3=dict(weight_decay=0.3),
    mixup1=dict(mixup=1.0),
    cutmix03=dict(cutmix=0.3),
)
recipe("r34_128", model="resnet34", image_size=128, epochs=60)
recipe("densenet121_128", model="densenet121", image_size=128, epochs=60)
recipe("resnet50v2_128", model="resnet50v2", image_size=128, epochs=60)
recipe("res2net50_128", model="res2net50_26w_4s", image_size=128, epochs=60)
# issue 16 item 4, the seed's comparison on the recommended command's recipe (128 px, 40 epochs)
recipe("rx50_128_e40", model="resnext50_32x4d", image_size=128, epochs=40)
recipe("resnet50v2_128_e40", model="resnet50v2", image_size=128, epochs=40)
recipe("densenet121_128_e40", model="densenet121", image_size=128, epochs=40)
# ... and with the default's 90 epochs, ResNeXt-50's best measured recipe (the `default` recipe)
recipe("resnet50v2_128_e90", model="resnet50v2", image_size=128, epochs=90)
recipe("densenet121_128_e90", model="densenet121", image_size=128, epochs=90)
# depth and width at the recommended command's recipe: the deeper basic-block net and the
# bottleneck nets the issue names (resnet26 / 50 and Res2Net-50)
recipe("r26_128_e40", model="resnet26", image_size=128, epochs=40)
recipe("r34_128_e40", model="resnet34", image_size=128, epochs=40)
recipe("r50_128_e40", model="resnet50", image_size=128, epochs=40)
recipe("res2net50_128_e40", model="res2net50_26w_4s", image_size=128, epochs=40)


def fold_plan(data: Path, folds: int, repeats: int) -> tuple[Any, list[tuple[int, int, list[int], list[int]]]]:
    """(the samples, [(repeat, fold, train indices, test indices)]): repeat r's folds use seed r."""
    from resnexus.data import kfold_splits, scan_dataset

    samples = scan_dataset(data, "patient")
    plan = []
    for r in range(repeats):
        for k, (train_idx, test_idx) in enumerate(kfold_splits(samples, folds, seed=r), start=1):
            plan.append((r, k, train_idx, test_idx))
    return samples, plan


def grouped_share(part: Any, share: float, seed: int) -> Any:
    """``share`` (1/2, 2/3, 3/4, ...) of ``part``, whole patients only and stratified: the training side
    of the first split of a K-fold with K = 1 / (1 - share), so the learning curve keeps the protocol's
    grouping."""
    from resnexus.data import kfold_splits

    k = round(1 / (1 - share))
    if not math.isclose((k - 1) / k, share, abs_tol=1e-6):
        raise ValueError(f"train_share {share} is not (K-1)/K for a whole K")
    kept, _ = kfold_splits(part, k, seed=seed)[0]
    return part.subset(kept)


def recipe_config(name: str, data: Path, out: Path, seed: int, precision: str = "fp32") -> Any:
    from resnexus.data import AugmentConfig
    from resnexus.engine import TrainConfig
    from resnexus.engine.config import complete_config

    overrides, augment = RECIPES[name]
    overrides = dict(overrides)
    seed += overrides.pop("seed_offset", 0)  # a recipe's twin trained from other seeds
    overrides.pop("train_share", None)  # applied to the fold run's training part (run_one), not a TrainConfig field
    config = complete_config(
        TrainConfig(
            data=str(data),
            out=str(out),
            val_fraction=0.0,
            test_fraction=0.0,
            group_by="patient",
            seed=seed,
            select="last",
            precision=precision,
            workers=0,
            checkpoint_every=1e9,
            overwrite=True,
            verbose=False,
            **overrides,
        )
    )
    if augment:
        config = replace(config, augment=replace(config.augment or AugmentConfig(), **augment))
    return config


def train_and_test(name: str, train_part: Any, test: Any, run_dir: Path, seed: int, precision: str) -> dict:
    """Train recipe ``name`` on ``train_part`` into ``run_dir``, predict ``test`` with and without
    flip TTA, and drop the weights (unless KEEP_WEIGHTS): the parts of a record both protocols share."""
    import torch
    from torch.utils.data import DataLoader

    from resnexus.data import ImageDataset, eval_transform
    from resnexus.engine.checkpoint import load_for_inference
    from resnexus.engine.fit import train
    from resnexus.engine.inference import predict_loader

    config = recipe_config(name, Path(train_part.root), run_dir, seed=seed, precision=precision)
    started = time.perf_counter()
    result = train(config, splits={"train": train_part})
    seconds = time.perf_counter() - started
    model, ckpt = load_for_inference(run_dir)
    preprocess = eval_transform(ckpt["image_size"], tuple(ckpt["mean"]), tuple(ckpt["std"]), ckpt["crop_fraction"])
    loader = DataLoader(ImageDataset(test, preprocess.sample), batch_size=64)
    labels, probs, _ = predict_loader(model, loader, torch.device("cpu"), preprocess=preprocess.batch)
    _, probs_flip, _ = predict_loader(model, loader, torch.device("cpu"), preprocess=preprocess.batch, flip_tta=True)
    for p in (run_dir / "checkpoints").glob("*.pt"):  # hundreds of runs: keep the records, not the weights
        if p.name != "best.pt" or not os.environ.get("KEEP_WEIGHTS"):
            p.unlink()
    return {
        "recipe": name,
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in RECIPES[name][0].items()},
        "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in RECIPES[name][1].items()},
        "n_train": len(train_part),
        "n_test": len(test),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "train_accuracy_last_epoch": result.history[-1].get("train_accuracy") if result.history else None,
        "paths": [p.relative_to(test.root).as_posix() for p in test.paths],
        "labels": labels.tolist(),
        "probs": probs[:, 1].round(5).tolist(),
        "probs_flip": probs_flip[:, 1].round(5).tolist(),
    }


def run_one(
    name: str, data: str, folds: int, repeats: int, repeat: int, fold: int, out: str, threads: int, precision: str
) -> dict:
    """Train recipe ``name`` on fold run (repeat, fold) and return its JSON record."""
    import torch

    torch.set_num_threads(threads)
    samples, plan = fold_plan(Path(data), folds, repeats)
    (_, _, train_idx, test_idx) = next(p for p in plan if p[0] == repeat and p[1] == fold)
    train_part = samples.subset(train_idx)
    share = RECIPES[name][0].get("train_share")
    if share is not None:
        train_part = grouped_share(train_part, share, seed=repeat * 100 + fold)
    run_dir = Path(out) / "runs" / name / f"r{repeat}f{fold}"
    record = train_and_test(name, train_part, samples.subset(test_idx), run_dir, repeat * 100 + fold, precision)
    return {"repeat": repeat, "fold": fold, "folds": folds} | record


def run_inner(
    name: str, data: str, folds: int, repeat: int, fold: int, inner: int, inner_fold: int, out: str, precision: str
) -> dict:
    """Nested CV: the model ``train --folds INNER`` would train as its fold ``inner_fold`` on outer fold
    run (repeat, fold)'s training part (inner folds: seed ``repeat``), tested on the outer held-out fold."""
    import torch

    from resnexus.data import kfold_splits

    torch.set_num_threads(1)
    samples, plan = fold_plan(Path(data), folds, repeat + 1)
    (_, _, train_idx, test_idx) = next(p for p in plan if p[0] == repeat and p[1] == fold)
    outer_train = samples.subset(train_idx)
    inner_train_idx, _ = kfold_splits(outer_train, inner, seed=repeat)[inner_fold - 1]
    run_dir = Path(out) / "nested" / name / f"r{repeat}f{fold}i{inner_fold}"
    seed = 10_000 + repeat * 100 + fold * 10 + inner_fold
    record = train_and_test(
        name, outer_train.subset(inner_train_idx), samples.subset(test_idx), run_dir, seed, precision
    )
    return {"repeat": repeat, "fold": fold, "folds": folds, "inner": inner, "inner_fold": inner_fold} | record


def load_records(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; see `list`")
    done = {(r["recipe"], r["repeat"], r["fold"]) for r in load_records(out) if r["folds"] == args.folds}
    todo = [
        (n, r, k)
        for r in range(args.first_repeat, args.repeats)
        for n in names
        for k in range(1, args.folds + 1)
        if (n, r, k) not in done
    ]
    print(f"{len(todo)} fold runs to do ({len(done)} on record) with {args.jobs} x {args.threads} threads", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(
                run_one, n, args.data, args.folds, args.repeats, r, k, str(out), args.threads, args.precision
            ): (
                n,
                r,
                k,
            )
            for n, r, k in todo
        }
        for future in as_completed(futures):
            n, r, k = futures[future]
            try:
                record = future.result()
            except Exception as error:  # one failed recipe must not stop the sweep
                print(f"FAILED {n} r{r}f{k}: {type(error).__name__}: {error}", flush=True)
                continue
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            acc = np.mean((np.asarray(record["probs"]) > 0.5) == np.asarray(record["labels"]))
            elapsed = (time.perf_counter() - started) / 60
            print(f"{n:>16} r{r}f{k}: acc {acc:.3f} in {record['seconds']:.0f} s ({elapsed:.1f} min)", flush=True)
    return 0


def fold_accuracies(records: list[dict], tta: bool) -> dict[tuple[int, int], float]:
    key = "probs_flip" if tta else "probs"
    return {
        (r["repeat"], r["fold"]): float(np.mean((np.asarray(r[key]) > 0.5) == np.asarray(r["labels"]))) for r in records
    }


def corrected_se(values: np.ndarray, n_test: float, n_train: float) -> float:
    """Nadeau & Bengio's corrected standard error (the package's), NaN below 2 values for the table."""
    from resnexus.reports.intervals import corrected_standard_error

    se = corrected_standard_error(list(values), n_test, n_train)
    return float("nan") if se is None else se


def summary_rows(records: list[dict], baseline: str, folds: int) -> list[dict]:
    by_recipe: dict[str, list[dict]] = {}
    for r in records:
        if r["folds"] == folds:
            by_recipe.setdefault(r["recipe"], []).append(r)
    base = fold_accuracies(by_recipe.get(baseline, []), tta=False)
    rows = []
    for name, recs in by_recipe.items():
        for tta in (False, True):
            accs = fold_accuracies(recs, tta)
            values = np.array(list(accs.values()))
            n_test = np.mean([r["n_test"] for r in recs])
            n_train = np.mean([r["n_train"] for r in recs])
            shared = sorted(set(accs) & set(base))
            diffs = np.array([accs[key] - base[key] for key in shared])
            rows.append(
                {
                    "recipe": name + (" +flip TTA" if tta else ""),
                    "runs": len(values),
                    "mean": float(values.mean()),
                    "se": corrected_se(values, n_test, n_train),
                    "paired_runs": len(shared),
                    "diff": float(diffs.mean()) if len(diffs) else float("nan"),
                    "diff_se": corrected_se(diffs, n_test, n_train) if len(diffs) else float("nan"),
                    "minutes": float(np.median([r["seconds"] for r in recs]) / 60),
                    "threads": recs[0]["threads"],
                    "overrides": {**recs[0]["overrides"], **recs[0]["augment"]},
                }
            )
    return sorted(rows, key=lambda row: -row["mean"])


def cmd_table(args: argparse.Namespace) -> int:
    rows = summary_rows(load_records(Path(args.out)), args.baseline, args.folds)
    if not args.tta:
        rows = [r for r in rows if "TTA" not in r["recipe"]]
    print(
        f"| recipe | fold runs | accuracy (mean ± corrected SE) | paired diff vs {args.baseline} "
        "| median min / fold run | changes |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        diff = "n/a" if math.isnan(row["diff"]) else f"{100 * row['diff']:+.1f} ± {100 * row['diff_se']:.1f}"
        changes = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "(package default)"
        print(
            f"| {row['recipe']} | {row['runs']} | {100 * row['mean']:.1f} ± {100 * row['se']:.1f} % | {diff} "
            f"| {row['minutes']:.1f} ({row['threads']} thread) | {changes} |"
        )
    return 0


def cmd_colour(args: argparse.Namespace) -> int:
    """A floor no network should fall below: 8-bin RGB + HSV histograms and a logistic regression
    (scikit-learn), on the same repeated grouped folds. If colour alone separated the classes, a
    CNN's score would say little about lesions."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def histograms(path: Path) -> np.ndarray:
        features = []
        for mode in ("RGB", "HSV"):
            pixels = np.asarray(Image.open(path).convert(mode).resize((64, 64)), dtype=np.float32) / 255
            for c in range(3):
                counts, _ = np.histogram(pixels[..., c], bins=8, range=(0, 1))
                features.extend(counts / counts.sum())
        return np.array(features)

    samples, plan = fold_plan(Path(args.data), args.folds, args.repeats)
    x, y = np.stack([histograms(p) for p in samples.paths]), np.asarray(samples.labels)
    accs = []
    for _, _, train_idx, test_idx in plan:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(x[train_idx], y[train_idx])
        accs.append(float((model.predict(x[test_idx]) == y[test_idx]).mean()))
    values = np.array(accs)
    n_test = np.mean([len(p[3]) for p in plan])
    n_train = np.mean([len(p[2]) for p in plan])
    majority = np.bincount(y).max() / len(y)
    print(
        f"colour histograms + logistic regression: {100 * values.mean():.1f} ± "
        f"{100 * corrected_se(values, n_test, n_train):.1f} % over {len(values)} fold runs "
        f"(majority class: {100 * majority:.1f} %)"
    )
    return 0


def _accuracy(probs: Any, labels: Any) -> float:
    return float(np.mean((np.asarray(probs) > 0.5) == np.asarray(labels)))


def _roc_auc(probs: Any, labels: Any) -> float:
    """ROC-AUC of the recorded positive-class probabilities, by the package's own metrics."""
    from resnexus.reports.metrics import classification_metrics

    p = np.asarray(probs, dtype=float)
    return float(classification_metrics(list(labels), np.stack([1 - p, p], 1), ["0", "1"])["roc_auc"])


def _mean_se(values: list[float], n_test: float = 30, n_train: float = 120) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * corrected_se(np.asarray(values), n_test, n_train):.1f}"


def _auc_se(values: list[float], n_test: float = 30, n_train: float = 120) -> str:
    """ROC-AUC (or a difference of two) with the same corrected SE, on the 0-1 scale."""
    return f"{np.mean(values):.3f} ± {corrected_se(np.asarray(values), n_test, n_train):.3f}"


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Average the recorded probabilities of several recipes' models on each fold run they share:
    does averaging models trained on the same photos help here? (No training: the records suffice.)"""
    names = args.recipes.split(",")
    by_run = {
        (r["recipe"], r["repeat"], r["fold"]): r for r in load_records(Path(args.out)) if r["folds"] == args.folds
    }
    shared = sorted({(r, k) for (n, r, k) in by_run if n == names[0] and all((m, r, k) in by_run for m in names)})
    if len(shared) < 2:
        sys.exit(f"fewer than 2 fold runs shared by {names}")
    single = {n: [_accuracy(by_run[(n, r, k)]["probs"], by_run[(n, r, k)]["labels"]) for r, k in shared] for n in names}
    mean_probs = [np.mean([by_run[(n, r, k)]["probs"] for n in names], axis=0) for r, k in shared]
    ensemble = [_accuracy(p, by_run[(names[0], r, k)]["labels"]) for p, (r, k) in zip(mean_probs, shared)]
    best = max(names, key=lambda n: np.mean(single[n]))
    diffs = [e - b for e, b in zip(ensemble, single[best])]
    print(f"{len(shared)} shared fold runs; " + ", ".join(f"{n} {_mean_se(single[n])} %" for n in names))
    print(f"mean of their probabilities: {_mean_se(ensemble)} %; paired vs the best single ({best}): {_mean_se(diffs)}")
    return 0


def cmd_testsize(args: argparse.Namespace) -> int:
    """Test the kept weights (KEEP_WEIGHTS=1) of one recipe at other test resolutions and crops
    (train/test resolution discrepancy, Touvron et al. 2019), paired against the recorded test."""
    import torch
    from torch.utils.data import DataLoader

    from resnexus.data import ImageDataset, eval_transform, scan_dataset
    from resnexus.engine.checkpoint import load_for_inference
    from resnexus.engine.inference import predict_loader

    torch.set_num_threads(args.threads)
    views = [(int(size), float(crop)) for size, crop in (v.split(":") for v in args.views.split(","))]
    samples = scan_dataset(Path(args.data), "patient")
    index = {p.relative_to(samples.root).as_posix(): i for i, p in enumerate(samples.paths)}
    recorded, by_view = [], {v: [] for v in views}
    for rec in sorted(load_records(Path(args.out)), key=lambda r: (r["repeat"], r["fold"])):
        run_dir = Path(args.out) / "runs" / args.recipe / f"r{rec['repeat']}f{rec['fold']}"
        if rec["recipe"] != args.recipe or not (run_dir / "checkpoints" / "best.pt").exists():
            continue
        model, ckpt = load_for_inference(run_dir)
        test = samples.subset([index[p] for p in rec["paths"]])
        recorded.append(_accuracy(rec["probs"], rec["labels"]))
        for size, crop in views:
            preprocess = eval_transform(size, tuple(ckpt["mean"]), tuple(ckpt["std"]), crop)
            loader = DataLoader(ImageDataset(test, preprocess.sample), batch_size=64)
            labels, probs, _ = predict_loader(model, loader, torch.device("cpu"), preprocess=preprocess.batch)
            by_view[(size, crop)].append(_accuracy(probs[:, 1], labels))
    if len(recorded) < 2:
        sys.exit(f"fewer than 2 kept fold runs of {args.recipe}: run it with KEEP_WEIGHTS=1")
    print(f"{args.recipe}, {len(recorded)} fold runs; as recorded: {_mean_se(recorded)} %")
    for (size, crop), accs in by_view.items():
        diffs = [a - b for a, b in zip(accs, recorded)]
        print(f"  test at {size} px, crop {crop:g}: {_mean_se(accs)} %, paired vs recorded {_mean_se(diffs)}")
    return 0


def recorded_runs(args: argparse.Namespace) -> tuple[list[str], dict[tuple[str, int, int], dict]]:
    """``--recipes`` checked against the registry, and the records of K-fold runs by (recipe, repeat, fold)."""
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; see `list`")
    records = [r for r in load_records(Path(args.out)) if r["folds"] == args.folds]
    return names, {(r["recipe"], r["repeat"], r["fold"]): r for r in records}


def cmd_models(args: argparse.Namespace) -> int:
    """Issue 16's item 4 table from the records: one row per recipe with the accuracy and its
    corrected SE, the paired difference against the first recipe on the fold runs both have, macro
    F1 and ROC-AUC (means over fold runs, the package's metrics), parameters and MACs of the model
    as trained, and the median training time and training images/s of one fold run."""
    import torch

    from resnexus import create_model
    from resnexus.models.registry import count_macs
    from resnexus.reports.metrics import classification_metrics

    names, by_run = recorded_runs(args)
    first = {(r, k): _accuracy(rec["probs"], rec["labels"]) for (n, r, k), rec in by_run.items() if n == names[0]}
    print(
        f"| model (recipe) | fold runs | accuracy (mean ± corrected SE) | paired diff vs {names[0]} | macro F1 "
        "| ROC-AUC | paired ROC-AUC diff | params | MACs | median min / fold run | train images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first_auc = {(r, k): _roc_auc(rec["probs"], rec["labels"]) for (n, r, k), rec in by_run.items() if n == names[0]}
    for name in names:
        recs = [rec for (n, _, _), rec in sorted(by_run.items()) if n == name]
        if not recs:
            print(f"| {name} | 0 | not run | | | | | | | | |")
            continue
        config = recipe_config(name, Path(args.data), Path(args.out), seed=0)
        accs = [_accuracy(r["probs"], r["labels"]) for r in recs]
        diffs = [
            accs[i] - first[(r["repeat"], r["fold"])] for i, r in enumerate(recs) if (r["repeat"], r["fold"]) in first
        ]
        scores = [
            classification_metrics(
                r["labels"], np.stack([1 - np.asarray(r["probs"]), np.asarray(r["probs"])], 1), ["0", "1"]
            )
            for r in recs
        ]
        with torch.device("meta"):
            model = create_model(config.model, num_classes=2).eval()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, (3, config.image_size, config.image_size))
        seconds = float(np.median([r["seconds"] for r in recs]))
        images_per_second = float(np.median([r["n_train"] * config.epochs / r["seconds"] for r in recs]))
        diff = f"{_mean_se(diffs)} ({len(diffs)})" if len(diffs) > 1 else "n/a"
        diff = "reference" if name == names[0] else diff
        auc_diffs = [
            s["roc_auc"] - first_auc[(r["repeat"], r["fold"])]
            for s, r in zip(scores, recs)
            if (r["repeat"], r["fold"]) in first_auc
        ]
        auc_diff = _auc_se(auc_diffs) if len(auc_diffs) > 1 else "n/a"
        auc_diff = "reference" if name == names[0] else auc_diff
        print(
            f"| {config.model} ({name}) | {len(recs)} | {_mean_se(accs)} % | {diff} "
            f"| {np.mean([s['macro_f1'] for s in scores]):.3f} | {np.mean([s['roc_auc'] for s in scores]):.3f} "
            f"| {auc_diff} "
            f"| {params / 1e6:.2f} M | {macs / 1e9:.2f} G | {seconds / 60:.1f} ({recs[0]['threads']} thread) "
            f"| {images_per_second:.1f} |"
        )
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    """The learning curve: the same recipe trained on fewer photos of each fold run (``train_share``
    recipes), tested on the same held-out folds. Each share is paired with the full recipe (the last
    one) fold run by fold run, and the gain per doubling of the photos (full against half, paired)
    is extrapolated to the photos a target accuracy would need, at that rate."""
    names, by_run = recorded_runs(args)
    full = {(r, k): rec for (n, r, k), rec in by_run.items() if n == names[-1]}
    print(
        f"| recipe | training photos (median) | fold runs | accuracy (mean ± corrected SE) | paired diff vs {names[-1]} "
        "| ROC-AUC | paired ROC-AUC diff |"
    )
    print("|---|---|---|---|---|---|---|")
    paired: dict[str, list[float]] = {}
    for name in names:
        recs = [rec for (n, _, _), rec in sorted(by_run.items()) if n == name]
        if not recs:
            print(f"| {name} | | 0 | not run | | | |")
            continue
        accs = [_accuracy(r["probs"], r["labels"]) for r in recs]
        aucs = [_roc_auc(r["probs"], r["labels"]) for r in recs]
        pairs = [(r, full[(r["repeat"], r["fold"])]) for r in recs if (r["repeat"], r["fold"]) in full]
        diffs = [_accuracy(a["probs"], a["labels"]) - _accuracy(b["probs"], b["labels"]) for a, b in pairs]
        auc_diffs = [_roc_auc(a["probs"], a["labels"]) - _roc_auc(b["probs"], b["labels"]) for a, b in pairs]
        paired[name] = diffs
        reference = name == names[-1]
        # the SE's correction uses this recipe's own test/train sizes (as `table` does): 30/60 for half
        sizes = (float(np.mean([r["n_test"] for r in recs])), float(np.mean([r["n_train"] for r in recs])))
        print(
            f"| {name} | {int(np.median([r['n_train'] for r in recs]))} | {len(recs)} | {_mean_se(accs, *sizes)} % "
            f"| {'reference' if reference else f'{_mean_se(diffs, *sizes)} ({len(diffs)})'} | {np.mean(aucs):.3f} "
            f"| {'reference' if reference else _auc_se(auc_diffs, *sizes)} |"
        )
    half = [n for n in names if math.isclose(RECIPES[n][0].get("train_share", 1.0), 0.5)]
    if half and len(paired.get(half[0], [])) > 1:
        gain = -np.asarray(paired[half[0]])  # full minus half: one doubling of the training photos
        per_doubling = float(gain.mean())
        half_recs = [rec for (n, _, _), rec in by_run.items() if n == half[0]]
        se = corrected_se(gain, np.mean([r["n_test"] for r in half_recs]), np.mean([r["n_train"] for r in half_recs]))
        full_acc = float(np.mean([_accuracy(r["probs"], r["labels"]) for r in full.values()]))
        print(f"\nper doubling of the training photos: {100 * per_doubling:+.1f} ± {100 * se:.1f} points (paired)")
        if per_doubling > 0:
            n_train = float(np.median([r["n_train"] for r in full.values()]))
            needed = n_train * 2 ** ((args.target - full_acc) / per_doubling)
            print(
                f"at that rate {100 * args.target:.0f} % would need about {needed:,.0f} training photos "
                f"({n_train:.0f} give {100 * full_acc:.1f} %); a straight-line extrapolation of a noisy slope"
            )
    return 0


def cmd_nested(args: argparse.Namespace) -> int:
    """Fold ensemble vs refit, by nested CV (issue 16 item 1): on each outer fold run, the ``--inner``
    fold models that ``train --folds INNER`` would train on the outer training part, their mean
    probability (``--ensemble``) against the refit on the whole outer training part, which is the
    recipe's own record of that fold run. Missing inner runs are trained first (resumable)."""
    out, name = Path(args.out), args.recipe
    if name not in RECIPES:
        sys.exit(f"unknown recipe {name!r}; see `list`")
    path = out / "nested.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    done = {(r["recipe"], r["inner"], r["repeat"], r["fold"], r["inner_fold"]) for r in records}
    todo = [
        (r, k, i)
        for r in range(args.repeats)
        for k in range(1, args.folds + 1)
        for i in range(1, args.inner + 1)
        if (name, args.inner, r, k, i) not in done
    ]
    print(f"{len(todo)} inner fold runs to do ({len(records)} on record) with {args.jobs} x 1 thread", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(run_inner, name, args.data, args.folds, r, k, args.inner, i, str(out), args.precision): (
                r,
                k,
                i,
            )
            for r, k, i in todo
        }
        for future in as_completed(futures):
            r, k, i = futures[future]
            record = future.result()
            records.append(record)
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name} r{r}f{k} inner {i}: acc {_accuracy(record['probs'], record['labels']):.3f}", flush=True)

    refits = {
        (r["repeat"], r["fold"]): r for r in load_records(out) if r["recipe"] == name and r["folds"] == args.folds
    }
    ensemble, refit, single = [], [], []
    auc_ensemble, auc_refit, auc_single = [], [], []
    for r in range(args.repeats):
        for k in range(1, args.folds + 1):
            inner = [
                x for x in records if (x["recipe"], x["inner"], x["repeat"], x["fold"]) == (name, args.inner, r, k)
            ]
            if len(inner) < args.inner or (r, k) not in refits:
                continue
            assert all(x["paths"] == refits[(r, k)]["paths"] for x in inner)  # the same held-out photos
            ensemble.append(_accuracy(np.mean([x["probs"] for x in inner], axis=0), inner[0]["labels"]))
            refit.append(_accuracy(refits[(r, k)]["probs"], refits[(r, k)]["labels"]))
            single.append(float(np.mean([_accuracy(x["probs"], x["labels"]) for x in inner])))
            mean_probs = np.mean([x["probs"] for x in inner], axis=0)
            auc_ensemble.append(_roc_auc(mean_probs, inner[0]["labels"]))
            auc_refit.append(_roc_auc(refits[(r, k)]["probs"], refits[(r, k)]["labels"]))
            auc_single.append(float(np.mean([_roc_auc(x["probs"], x["labels"]) for x in inner])))
    if len(refit) < 2:
        sys.exit(f"fewer than 2 complete outer fold runs of {name} (the refit is `run --recipes {name}`)")
    print(f"{name}, {len(refit)} outer fold runs, {args.inner} inner folds each:")
    print(f"  refit on the whole training part: {_mean_se(refit)} %")
    print(
        f"  mean of the {args.inner} fold models (--ensemble): {_mean_se(ensemble)} %, paired vs refit "
        f"{_mean_se([e - f for e, f in zip(ensemble, refit)])}"
    )
    print(f"  one fold model alone (mean): {_mean_se(single)} %")
    print(
        f"  ROC-AUC: refit {_auc_se(auc_refit)}, fold models' mean {_auc_se(auc_ensemble)} (paired vs refit "
        f"{_auc_se([e - f for e, f in zip(auc_ensemble, auc_refit)])}), one fold model {_auc_se(auc_single)}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for name, (overrides, augment) in RECIPES.items():
        print(f"{name:>16}: {overrides} {augment or ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the recipes' missing fold runs")
    run.add_argument("--recipes", required=True, help="comma-separated names (see `list`)")
    run.add_argument("--repeats", type=int, default=3, help="CV repeats, fold seeds 0..R-1 (default 3)")
    run.add_argument(
        "--first-repeat", type=int, default=0, help="start at this repeat: add repeat 2 alone with --first-repeat 2"
    )
    run.add_argument("--jobs", type=int, default=2, help="fold runs side by side (default 2)")
    run.add_argument("--threads", type=int, default=1, help="torch threads per fold run (default 1)")
    run.add_argument(
        "--precision", default="fp32", help="fp32 (default: CPUs without AMX) or auto (bf16 on GPUs / AMX CPUs)"
    )
    table = sub.add_parser("table", help="the Markdown table of what is on record")
    table.add_argument("--baseline", default="default")
    table.add_argument("--tta", action="store_true", help="also the rows with flip TTA")
    sub.add_parser("list", help="the recipes")
    nested = sub.add_parser("nested", help="fold ensemble vs refit by nested CV (trains the inner fold runs)")
    nested.add_argument("--recipe", required=True)
    nested.add_argument("--inner", type=int, default=5, help="inner folds, as train --folds (default 5)")
    nested.add_argument("--repeats", type=int, default=1, help="outer repeats (default 1)")
    nested.add_argument("--jobs", type=int, default=2)
    nested.add_argument("--precision", default="fp32")
    models = sub.add_parser("models", help="item 4's table: accuracy, paired diff, F1, AUC, params, MACs, speed")
    models.add_argument("--recipes", required=True, help="comma-separated; the first is the paired reference")
    ensemble = sub.add_parser("ensemble", help="average recorded probabilities of several recipes per fold run")
    ensemble.add_argument("--recipes", required=True)
    testsize = sub.add_parser("testsize", help="kept weights of a recipe tested at other resolutions / crops")
    testsize.add_argument("--recipe", required=True)
    testsize.add_argument("--views", default="128:0.875,128:1.0,160:1.0,160:0.875,192:1.0", help="SIZE:CROP,...")
    testsize.add_argument("--threads", type=int, default=1)
    curve = sub.add_parser("curve", help="the learning curve: train_share recipes paired with the full one (last)")
    curve.add_argument("--recipes", required=True, help="comma-separated, fewest photos first, the full recipe last")
    curve.add_argument("--target", type=float, default=0.75, help="accuracy to extrapolate to (default 0.75)")
    colour = sub.add_parser("colour", help="the colour-histogram floor on the same folds")
    colour.add_argument("--repeats", type=int, default=5)
    for sp in (run, table, colour, ensemble, testsize, models, nested, curve):
        sp.add_argument("--data", default=str(DEFAULT_DATA))
        sp.add_argument("--out", default=str(DEFAULT_OUT))
        sp.add_argument("--folds", type=int, default=5, help="K (default 5)")
    args = p.parse_args(argv)
    if args.command == "run":
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    commands = {
        "run": cmd_run,
        "table": cmd_table,
        "list": cmd_list,
        "colour": cmd_colour,
        "ensemble": cmd_ensemble,
        "testsize": cmd_testsize,
        "models": cmd_models,
        "nested": cmd_nested,
        "curve": cmd_curve,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
