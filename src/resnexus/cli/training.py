"""``train``, ``compare`` and ``check-data``: the commands that read an image folder and a recipe.

``train`` and ``compare`` take the TrainConfig fields as flags whose help comes from the fields
themselves (:func:`~resnexus.engine.config.field_help`), and accept only the choices
:data:`~resnexus.engine.config.CHOICES` lists, so no default or choice is written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from ..data.check import MAX_PIXELS, check_data
from ..data.sampler import check_global_batch
from ..engine import compare, cross_validate, train
from ..engine.calibrate import calibrate
from ..engine.config import (
    CHOICES,
    TrainConfig,
    complete_config,
    field_help,
    validate_config,
)
from ..engine.crossval import resume_settings as cv_resume_settings
from ..engine.crossval import study_of as cv_study_of
from ..engine.distributed import torchrun_command
from ..engine.interrupt import TrainingInterrupted
from ..engine.resume import resume_config, resume_with
from ..engine.rundir import RunDir
from .command import Command, config_option

# train's and compare's --help sections, in this order
SECTIONS = ("data", "model", "recipe", "augmentation", "cross-validation", "distributed & performance", "output")


def _sections(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    return {title: p.add_argument_group(title) for title in SECTIONS}


# -- train ----------------------------------------------------------------------------------------
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = _sections(p)
    config_option(g["model"], "--model")
    config_option(g["model"], "--weights")
    config_option(g["model"], "--weights-dir")
    config_option(g["model"], "--freeze", type=int)
    config_option(g["model"], "--framework", choices=CHOICES["framework"])
    config_option(g["model"], "--keras-backend", choices=CHOICES["keras_backend"])
    config_option(g["output"], "--out")
    g["output"].add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint, on the same images (checked) and recipe: options that "
        "would change the run are refused, except a longer --epochs, which re-stretches the cosine schedule "
        "to the new total",
    )
    cv = g["cross-validation"]
    cv.add_argument(
        "--folds",
        type=int,
        help="K-fold cross-validation (stratified, grouped): each fold is the test "
        "set once, validation is --val-fraction of the rest; reports mean +- std (the estimate), "
        "then trains the deployable model on every image into RUN_DIR/refit",
    )
    cv.add_argument(
        "--jobs",
        type=int,
        help="with --folds: train N of the fold runs and the refit side by side, each in a process with "
        "1/N of the threads: the same runs and files (benchmarks/cv_jobs.py measures the gain); default 1",
    )
    cv.add_argument(
        "--no-refit",
        dest="no_refit",
        action="store_true",
        help="with --folds: skip the model on every image (use the fold models with --ensemble)",
    )
    config_option(cv, "--target-sensitivity", type=float)
    config_option(cv, "--target-specificity", type=float)
    config_option(cv, "--no-temperature-scaling", "temperature_scaling", action="store_false")
    g["distributed & performance"].add_argument(
        "--nproc",
        type=int,
        help="train data-parallel in N processes on this machine "
        "(runs torchrun --standalone --nproc_per_node N); --batch-size is the global batch",
    )
    add_recipe_flags(g)


def add_recipe_flags(g: dict[str, argparse._ArgumentGroup]) -> None:
    """The data and training-recipe flags `train` and `compare` share, in their --help sections."""
    data, recipe, augment = g["data"], g["recipe"], g["augmentation"]
    perf, out = g["distributed & performance"], g["output"]
    config_option(data, "--data")
    config_option(data, "--val-fraction", type=float)
    config_option(data, "--test-fraction", type=float)
    config_option(data, "--group-by")
    config_option(data, "--skip-bad-images", action="store_true")
    config_option(g["model"], "--image-size", type=int)
    recipe.add_argument("--config", dest="config_file", help="YAML file of TrainConfig fields; flags override it")
    config_option(recipe, "--epochs", type=int)
    config_option(recipe, "--batch-size", type=int)
    config_option(recipe, "--lr", type=float)
    config_option(recipe, "--optimizer", choices=CHOICES["optimizer"])
    config_option(recipe, "--weight-decay", type=float)
    config_option(recipe, "--warmup-epochs", type=float)
    config_option(recipe, "--label-smoothing", type=float)
    config_option(recipe, "--ema", "ema_decay", type=float)
    config_option(recipe, "--clip-grad", "clip_grad_norm", type=float)
    config_option(recipe, "--early-stopping", type=int)
    config_option(recipe, "--balance", choices=CHOICES["balance"])
    config_option(recipe, "--select", choices=CHOICES["select"])
    config_option(recipe, "--seed", type=int)
    config_option(augment, "--mixup", type=float)
    config_option(augment, "--cutmix", type=float)
    config_option(augment, "--tta", action="store_true")
    config_option(perf, "--precision", choices=CHOICES["precision"])
    config_option(perf, "--compile", action="store_true")
    config_option(perf, "--workers", type=int)
    config_option(perf, "--cache-dir")
    config_option(perf, "--sync-bn", action="store_true")
    config_option(out, "--overwrite", action="store_true")
    config_option(out, "--positive-class")
    config_option(out, "--checkpoint-every", type=float)
    config_option(out, "--progress-every", type=float)
    config_option(out, "--tensorboard", action="store_true")


# the parsed arguments of train and compare that are not TrainConfig fields
_NOT_CONFIG = (
    "command",
    "config_file",
    "resume",
    "folds",
    "repeats",
    "jobs",
    "no_refit",
    "models",
    "no_isolate",
    "nproc",
)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from (in rising priority) its defaults, a --config YAML file, the typed flags."""
    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if getattr(args, "resume", None):
        refused = ["--config"] if getattr(args, "config_file", None) else []
        study = cv_study_of(args.resume)
        if study is not None:  # a fold run alone would be split anew: refused as "other splits"
            raise ValueError(
                f"{args.resume} is one run of the cross-validation {study}: continue the whole cross-validation "
                f"with: resnexus train --resume {shlex.quote(str(study))}"
            )
        cv = cv_resume_settings(args.resume)
        return resume_with(cv[0] if cv else resume_config(args.resume), given, refused)
    config_file = getattr(args, "config_file", None)
    base = TrainConfig.from_yaml(config_file) if config_file else TrainConfig()
    return dataclasses.replace(base, **given)


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = train_config_from_args(args)
    validate_config(config)  # once, here: under --nproc a bad value would fail in every process
    nproc = getattr(args, "nproc", None)
    if config.framework == "keras" and nproc is not None:
        raise ValueError("--framework keras does not support --nproc (PyTorch only)")
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_global_batch(complete_config(config).batch_size, nproc)  # one line here, not one per process
        return _launch_torchrun(nproc, argv)
    folds = getattr(args, "folds", None)
    no_refit = getattr(args, "no_refit", False)
    cv = cv_resume_settings(args.resume) if getattr(args, "resume", None) else None
    if cv is not None:  # continuing a cross-validation: its folds and refit as it started
        if folds not in (None, cv[1]) or (no_refit and cv[2]):
            raise ValueError(
                f"--resume {args.resume} continues a {cv[1]}-fold cross-validation"
                f"{'' if cv[2] else ' without refit'}; it cannot change --folds or --no-refit"
            )
        folds, no_refit = cv[1], not cv[2]
    if no_refit and folds is None:
        raise ValueError("--no-refit goes with --folds (a plain train has no refit step)")
    jobs = getattr(args, "jobs", None)
    if jobs is not None and folds is None:
        raise ValueError("--jobs goes with --folds (it trains fold runs side by side)")
    if folds is None and (asked := calibration_flags(config)):
        raise ValueError(f"{asked} goes with --folds: calibration is fitted on the out-of-fold predictions")
    if folds is not None:
        cross_validate(config, folds, refit=not no_refit, jobs=1 if jobs is None else jobs)
    else:
        train(config)
    return 0


def calibration_flags(config: TrainConfig) -> str | None:
    """The calibration flags a config sets (``--target-sensitivity``, ...), or None."""
    given = [
        flag
        for flag, value in (
            ("--target-sensitivity", config.target_sensitivity),
            ("--target-specificity", config.target_specificity),
            ("--no-temperature-scaling", None if config.temperature_scaling else True),
        )
        if value is not None
    ]
    return ", ".join(given) or None


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``train --nproc N``: the same command under torchrun, N processes on this machine."""
    rest, skip = [], False
    for arg in argv:  # drop --nproc N / --nproc=N, keep everything else as typed
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = torchrun_command(nproc, rest)
    print("launching: " + " ".join(command[1:]), flush=True)
    return subprocess.call(command)


# -- compare --------------------------------------------------------------------------------------
def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    g = _sections(p)
    g["model"].add_argument(
        "--models",
        required=True,
        help="comma-separated registry names; keras:NAME trains NAME with Keras (model.fit), "
        "e.g. resnext50_32x4d,keras:resnext50_32x4d",
    )
    g["output"].add_argument("--out", required=True, help="folder for the runs, comparison.md/.csv and the plot")
    g["output"].add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped comparison in --out with the same options: finished runs are kept, an "
        "interrupted one continues from its last.pt, the others are trained",
    )
    g["cross-validation"].add_argument(
        "--folds",
        type=int,
        help="compare on K-fold cross-validation (stratified, grouped by --group-by) instead of one split: "
        "every model on the same fold runs; mean, corrected SE and the paired difference against the first model",
    )
    g["cross-validation"].add_argument(
        "--repeats",
        type=int,
        help="with --folds: repeat the K folds R times with fold seeds seed .. seed+R-1 (default 1)",
    )
    perf = g["distributed & performance"]
    perf.add_argument(
        "--jobs",
        type=int,
        help="train N runs (models, fold runs) side by side, each in its own process with 1/N of the threads; "
        "default 1",
    )
    perf.add_argument(
        "--no-isolate",
        dest="no_isolate",
        action="store_true",
        help="train in this process (faster; peak memory is then not measured on CPU)",
    )
    add_recipe_flags(g)


def run_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    # --out is the comparison's folder and --resume continues the comparison: neither is one run's
    base = train_config_from_args(
        argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("out", "resume")})
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        compare(  # it logs where comparison.md is and the best model: not printed twice
            models,
            base,
            args.out,
            isolate=not getattr(args, "no_isolate", False),
            folds=getattr(args, "folds", None),
            repeats=getattr(args, "repeats", 1),
            jobs=getattr(args, "jobs", 1),
            resume=getattr(args, "resume", False),
        )
    except TrainingInterrupted as stopped:  # the same command, with --resume, continues it
        again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
        command = "resnexus " + shlex.join(again)
        raise TrainingInterrupted(stopped.run_dir, stopped.signum, stopped.where, command, stopped.saved) from None
    return 0


# -- check-data -----------------------------------------------------------------------------------
def add_check_data_arguments(cd: argparse.ArgumentParser) -> None:
    cd.add_argument("data", help="class-folder tree (optionally train/ val/ test/) or a path,label CSV")
    cd.add_argument(
        "--max-pixels", type=int, help="larger images are refused as decompression bombs (default 100,000,000)"
    )
    cd.add_argument("--quiet", action="store_true", help="errors and warnings only, no notes")
    # check-data also splits the data as train would (these flags mean what they mean for train)
    config_option(cd, "--val-fraction", type=float)
    config_option(cd, "--test-fraction", type=float)
    config_option(cd, "--group-by")
    config_option(cd, "--seed", type=int)


def run_check_data(args: argparse.Namespace, argv: Sequence[str]) -> int:
    given: dict[str, Any] = {k: getattr(args, k) for k in ("val_fraction", "test_fraction", "group_by", "seed")}
    split = {k: v for k, v in given.items() if v is not None}  # unset: train's defaults
    report = check_data(args.data, max_pixels=args.max_pixels or MAX_PIXELS, **split)
    print(report.format(notes=not args.quiet))
    return 1 if report.errors else 0


# -- calibrate ------------------------------------------------------------------------------------
def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `train --folds K` directory")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-sensitivity", type=float, help=field_help("target_sensitivity"))
    target.add_argument("--target-specificity", type=float, help="as --target-sensitivity, for a specificity")
    p.add_argument(
        "--no-temperature-scaling",
        dest="temperature_scaling",
        action="store_false",
        default=None,
        help="keep the model's own probabilities (T = 1); default: the run's choice",
    )


def run_calibrate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    calibrate(args.run_dir, args.target_sensitivity, args.target_specificity, args.temperature_scaling)
    print(f"calibration: {RunDir(args.run_dir).calibration} (report: {RunDir(args.run_dir).cv_report})")
    return 0


TRAIN = Command(
    "train",
    "train and evaluate a model on an image folder (default: built-in digits)",
    add_train_arguments,
    run_train,
    only_typed=True,
)
COMPARE = Command(
    "compare",
    "train several models on the same split and recipe, side by side",
    add_compare_arguments,
    run_compare,
    only_typed=True,
)
CHECK_DATA = Command(
    "check-data", "find unreadable, oversized, duplicate and misplaced images", add_check_data_arguments, run_check_data
)
CALIBRATE = Command(
    "calibrate",
    "fit a cross-validation run's calibration again: temperature, prediction sets, operating point",
    add_calibrate_arguments,
    run_calibrate,
)
