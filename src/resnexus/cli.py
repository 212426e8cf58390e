"""The ``resnexus`` command: argument parsing only; every command calls a function of the API.

The library reports progress through :mod:`logging` (logger ``resnexus``); the command decides how
it looks: one plain line per message on standard output.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .data import AugmentConfig
from .data.check import MAX_PIXELS, check_data
from .data.sampler import check_global_batch
from .engine import compare, cross_validate, evaluate, predict, train
from .engine.config import TrainConfig, complete_config, field_help, resume_config, resume_with, validate_config
from .engine.crossval import resume_settings as cv_resume_settings
from .engine.crossval import study_of as cv_study_of
from .engine.distributed import torchrun_command
from .engine.explain import explain
from .engine.export import export_keras, export_onnx
from .engine.interrupt import TrainingInterrupted
from .models.registry import ModelInfo, list_models, list_pretrained, model_info
from .reports import describe_positive_class, format_metrics, markdown_table


def models_table(names: Sequence[str], markdown: bool = False) -> str:
    """A table of models with their measured size and cost and the paper's figures."""
    header = ["model", "family", "params", "GMACs", "input", "paper top-1 err", "paper source"]
    rows = []
    for name in names:
        info: ModelInfo = model_info(name)
        ref = info.reference
        err = "" if ref is None or ref.top1_error is None else f"{ref.top1_error:.2f}% ({ref.dataset})"
        rows.append(
            [
                name,
                info.family,
                f"{info.params:,}",
                f"{info.macs / 1e9:.2f}",
                "x".join(map(str, info.input_size)),
                err,
                "" if ref is None else ref.source,
            ]
        )
    if markdown:
        return markdown_table(header, rows, align="llrrlll")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i in (2, 3) else '<'}{w}}}" for i, w in enumerate(widths[:-1])) + "  {}"
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def _trimmed(value: float) -> str:
    """A figure with the decimals its source gives (up to 3): 76.13, 74.434, 75.0."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def weights_table(names: Sequence[str], markdown: bool = False) -> str:
    """The published weights of ``names``: the tag ``weights=`` takes, top-1, evaluation transform, license."""
    header = ["model", "weights=", "top-1", "eval transform", "license", "file (source)"]
    rows = []
    for name in names:
        for w in list_pretrained(name)[name]:
            prep = w.preprocessing
            norm = f"Keras '{prep.keras_mode}'" if prep.keras_mode else "ImageNet mean/std"
            tag = f"{w.tag} (imagenet)" if w.recommended else w.tag
            top1 = "" if w.top1 is None else _trimmed(w.top1) + "%"
            link = w.source.split()[0]
            source = f"[{w.file_name}]({link})" if markdown else w.file_name
            rows.append([name, tag, top1, f"{prep.resize_size} -> {prep.input_size}, {norm}", w.license, source])
    if markdown:
        return markdown_table(header, rows, align="llrlll")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


# What each command is for and how it is typed: `resnexus COMMAND --help` shows the description
# above the options and the examples below them (tests parse every example with build_parser).
_GUIDE: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": (
        "Train a model on a labelled image folder (or a path,label CSV), evaluate it on a held-out test\n"
        "split and write a run directory: checkpoints, metrics and a report. Without --data it trains on\n"
        "scikit-learn's handwritten digits, a check that everything works. On a small data set add\n"
        "--folds K for a cross-validated estimate, and --group-by so one patient's images stay together.",
        (
            "resnexus train                                  # built-in digits, a few minutes on a laptop",
            "resnexus train --data photos/ --model resnet18 --folds 5 --group-by patient --out runs/lesions",
            "resnexus train --data photos/ --model resnet50 --weights imagenet --freeze 1   # fine-tune",
            "resnexus train --data labels.csv --group-by site --epochs 40 --out runs/sites",
            "resnexus train --resume runs/lesions            # continue a stopped run (or --epochs 60: longer)",
            "resnexus train --data photos/ --nproc 2 --batch-size 128   # two processes, data-parallel",
        ),
    ),
    "compare": (
        "Train several models on the same split (or the same K folds) with the same recipe and write a\n"
        "side-by-side table (comparison.md/.csv) and a plot: accuracy, parameters, MACs, speed, memory.\n"
        "Use it to choose an architecture for your data; with --folds the table has the mean, its\n"
        "corrected standard error and each model's paired difference against the first.",
        (
            "resnexus compare --models resnet20_cifar,resnet32_cifar --out runs/digits-compare",
            "resnexus compare --models resnet18,resnext50_32x4d --data photos/ --folds 5 --group-by patient "
            "--out runs/cmp",
            "resnexus compare --models resnet18,resnet50 --data photos/ --folds 5 --repeats 3 --jobs 2 --out runs/cmp3",
            "resnexus compare --models resnet50,keras:resnet50 --data photos/ --out runs/frameworks",
            "resnexus compare --models resnet18,resnext50_32x4d --data photos/ --folds 5 --group-by patient "
            "--out runs/cmp --resume",
        ),
    ),
    "evaluate": (
        "Measure a trained model on labelled images it has not seen: accuracy, per-class metrics and the\n"
        "confusion matrix (for two classes also sensitivity, specificity and ROC-AUC). Use it on a new\n"
        "test set, or on an exported .onnx file to check the export gives the same numbers.",
        (
            "resnexus evaluate --checkpoint runs/lesions --data new-photos/",
            "resnexus evaluate --checkpoint runs/lesions/checkpoints/best.pt --data photos/test --out metrics.json",
            "resnexus evaluate --checkpoint runs/cv --ensemble --tta --data new-photos/",
            "resnexus evaluate --checkpoint model.onnx --data new-photos/ --positive-class melanoma",
        ),
    ),
    "predict": (
        "Classify unlabelled images with a trained model (or a registry model with published weights)\n"
        "and write one CSV row per image: the predicted label and every class's probability.\n"
        "Use --id-label for a Kaggle-style id,label submission file.",
        (
            "resnexus predict --checkpoint runs/lesions --input new-photos/ --output predictions.csv",
            "resnexus predict --checkpoint model.onnx --input photo.jpg --output photo.csv",
            "resnexus predict --model resnet50 --weights imagenet --input photos/ --output imagenet.csv",
            "resnexus predict --checkpoint runs/cv --ensemble --tta --input test/ --output submission.csv --id-label",
        ),
    ),
    "explain": (
        "Draw Grad-CAM heat maps over images: where in each image the evidence for a class lies, one\n"
        "<image>_gradcam.png per image and explain.csv. Use it to check that a model looks at the\n"
        "object, not at a ruler, a label or the background.",
        (
            "resnexus explain --checkpoint runs/lesions --input new-photos/ --out cams/",
            "resnexus explain --checkpoint runs/lesions --input photo.jpg --out cams/ --target melanoma",
            "resnexus explain --checkpoint runs/cv --ensemble --input photos/test --out cams/ --overwrite",
        ),
    ),
    "export": (
        "Convert a trained checkpoint for deployment: ONNX (onnxruntime; predict, evaluate and serve\n"
        "read it too), a Keras .keras file, or a TensorFlow SavedModel folder for TF Serving.\n"
        "Check the result with `resnexus evaluate --checkpoint model.onnx --data ...`.",
        (
            "resnexus export --checkpoint runs/lesions --output model.onnx",
            "resnexus export --checkpoint runs/lesions --output model.keras --format keras",
            "resnexus export --checkpoint runs/lesions --output saved/lesions --format savedmodel --overwrite",
        ),
    ),
    "check-data": (
        "Check an image folder or a path,label CSV before training: unreadable, truncated and oversized\n"
        "files, duplicates (also across splits and labels), empty or stray class folders, and whether\n"
        "train can split it with these fractions and --group-by. It reads the images and changes nothing.",
        (
            "resnexus check-data photos/",
            "resnexus check-data photos/ --group-by patient --quiet",
            "resnexus check-data labels.csv --group-by site --test-fraction 0.3",
        ),
    ),
    "models": (
        "List the registered architectures with their parameters, multiply-accumulates per image and\n"
        "the paper's error, or (--weights) the published weights each can load: the tags that\n"
        "`train --weights` and `predict --weights` take. Use it to pick a --model.",
        (
            "resnexus models",
            "resnexus models 'resnext*'",
            "resnexus models --family densenet --markdown",
            "resnexus models resnet50 --weights",
        ),
    ),
    "serve": (
        "Serve a trained model over HTTP: POST /v1/predict returns class probabilities, / is a web page\n"
        "to try images by hand, /metrics is for Prometheus; requests arriving together are batched.\n"
        "Needs the serve extra: pip install 'resnexus[serve]'.",
        (
            "resnexus serve --checkpoint runs/lesions",
            "resnexus serve --checkpoint model.onnx --port 9000 --max-batch 16",
            "resnexus serve --checkpoint runs/cv --max-file-mb 32 --no-batching",
        ),
    ),
}


def _command(
    commands: argparse._SubParsersAction, name: str, epilog: str = "", **kwargs: Any
) -> argparse.ArgumentParser:
    """A sub-command with its description and examples from :data:`_GUIDE` (``epilog``: more after them)."""
    description, examples = _GUIDE[name]
    text = "examples:\n" + "\n".join("  " + line for line in examples) + ("\n\n" + epilog if epilog else "")
    return commands.add_parser(
        name, description=description, epilog=text, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


# train's and compare's --help sections, in this order
_SECTIONS = ("data", "model", "recipe", "augmentation", "cross-validation", "distributed & performance", "output")


def _sections(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    return {title: p.add_argument_group(title) for title in _SECTIONS}


def _add_train(commands: argparse._SubParsersAction) -> None:
    # Flags default to SUPPRESS so that only what was typed overrides --config and the defaults.
    p = _command(
        commands,
        "train",
        help="train and evaluate a model on an image folder (default: built-in digits)",
        argument_default=argparse.SUPPRESS,
    )
    g = _sections(p)
    _option(g["model"], "--model")
    _option(g["model"], "--weights")
    _option(g["model"], "--weights-dir")
    _option(g["model"], "--freeze", type=int)
    _option(g["model"], "--framework", choices=("torch", "keras"))
    _option(g["output"], "--out")
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
    g["distributed & performance"].add_argument(
        "--nproc",
        type=int,
        help="train data-parallel in N processes on this machine "
        "(runs torchrun --standalone --nproc_per_node N); --batch-size is the global batch",
    )
    _add_recipe_flags(g)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    p = _command(
        commands,
        "compare",
        help="train several models on the same split and recipe, side by side",
        argument_default=argparse.SUPPRESS,
    )
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
    _add_recipe_flags(g)


def _option(p: argparse._ActionsContainer, flag: str, dest: str | None = None, **kwargs: Any) -> None:
    """A flag for a TrainConfig field, with the field's help (defaults included) from engine/config.py."""
    dest = dest or flag.removeprefix("--").replace("-", "_")
    p.add_argument(flag, dest=dest, help=field_help(dest), **kwargs)


def _add_recipe_flags(g: dict[str, argparse._ArgumentGroup]) -> None:
    """The data and training-recipe flags `train` and `compare` share, in their --help sections."""
    data, recipe, augment = g["data"], g["recipe"], g["augmentation"]
    perf, out = g["distributed & performance"], g["output"]
    _option(data, "--data")
    _option(data, "--val-fraction", type=float)
    _option(data, "--test-fraction", type=float)
    _option(data, "--group-by")
    _option(data, "--skip-bad-images", action="store_true")
    _option(g["model"], "--image-size", type=int)
    recipe.add_argument("--config", dest="config_file", help="YAML file of TrainConfig fields; flags override it")
    _option(recipe, "--epochs", type=int)
    _option(recipe, "--batch-size", type=int)
    _option(recipe, "--lr", type=float)
    _option(recipe, "--optimizer", choices=("sgd", "adamw"))
    _option(recipe, "--weight-decay", type=float)
    _option(recipe, "--warmup-epochs", type=float)
    _option(recipe, "--label-smoothing", type=float)
    _option(recipe, "--ema", "ema_decay", type=float)
    _option(recipe, "--clip-grad", "clip_grad_norm", type=float)
    _option(recipe, "--early-stopping", type=int)
    _option(recipe, "--balance", choices=("none", "loss", "sampler"))
    _option(recipe, "--select", choices=("auto", "val", "last"))
    _option(recipe, "--seed", type=int)
    _option(augment, "--mixup", type=float)
    _option(augment, "--cutmix", type=float)
    _option(augment, "--tta", action="store_true")
    _option(perf, "--precision", choices=("auto", "bf16", "fp16", "fp32"))
    _option(perf, "--compile", action="store_true")
    _option(perf, "--workers", type=int)
    _option(perf, "--cache-dir")
    _option(perf, "--sync-bn", action="store_true")
    _option(out, "--overwrite", action="store_true")
    _option(out, "--positive-class")
    _option(out, "--checkpoint-every", type=float)
    _option(out, "--progress-every", type=float)
    _option(out, "--tensorboard", action="store_true")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from (in rising priority) its defaults, a --config YAML file, the typed flags."""
    not_config = (
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
    given = {k: v for k, v in vars(args).items() if k not in not_config}
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
    values: dict[str, Any] = {}
    if getattr(args, "config_file", None):
        path = Path(args.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields (key: value), got {values!r}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(map(str, set(values) - known))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        if isinstance(values.get("augment"), dict):
            augment_keys = {f.name for f in dataclasses.fields(AugmentConfig)}
            if unknown := sorted(map(str, set(values["augment"]) - augment_keys)):
                raise ValueError(f"{path}: unknown augment keys {unknown}; known: {sorted(augment_keys)}")
            values["augment"] = AugmentConfig(**values["augment"])  # its values: checked by complete_config
    return TrainConfig(**(values | given))


def _run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
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
    if folds is not None:
        cross_validate(config, folds, refit=not no_refit, jobs=1 if jobs is None else jobs)
    else:
        train(config)
    return 0


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


_CHECKPOINT_HELP = (
    "a resnexus checkpoint, an exported .onnx file, or a run directory "
    "(a `train --folds` directory: its refit model; a `train` directory: its best.pt)"
)
_ENSEMBLE_HELP = "--checkpoint is a `train --folds` directory: use its fold models, averaging their probabilities"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnexus",
        description="The ResNet family of image classifiers.",
        epilog="`resnexus COMMAND --help` describes a command, its options and examples; start with `resnexus train`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('resnexus').__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_compare(commands)
    ev = _command(commands, "evaluate", help="metrics of a checkpoint on a labelled image folder")
    ev.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    ev.add_argument("--data", required=True, help="folder with class sub-folders (or its test/ part)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ev.add_argument("--tta", action="store_true", help="average each image's and its mirror's probabilities")
    ev.add_argument("--ensemble", action="store_true", help=_ENSEMBLE_HELP)
    ev.add_argument(
        "--positive-class",
        help="two classes: the class sensitivity, specificity and ROC are about (default: the run's choice, "
        "else a class not named like others/normal/healthy/benign/control, else the second in sorted order)",
    )
    ev.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="evaluate on the images that can be decoded instead of stopping at the first that cannot; "
        "the rest are listed in the log and under 'skipped' in --out",
    )
    pr = _command(commands, "predict", help="predict images into a CSV file")
    pr.add_argument("--checkpoint", help=_CHECKPOINT_HELP)
    pr.add_argument("--model", help="without --checkpoint: a registry name, used with published --weights")
    pr.add_argument(
        "--weights",
        help="without --checkpoint: published weights by name ('imagenet', or see `resnexus models --weights`)",
    )
    pr.add_argument("--weights-dir", help="folder of downloaded weights files (default $RESNEXUS_WEIGHTS_DIR)")
    pr.add_argument("--input", required=True, help="an image or a folder (read in natural sort order)")
    pr.add_argument("--output", required=True, help="CSV: path,label,prob_<class>...")
    pr.add_argument("--id-label", action="store_true", help="write a Kaggle-style id,label file instead")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never an input)")
    pr.add_argument("--tta", action="store_true", help="average each image's and its mirror's probabilities")
    pr.add_argument("--ensemble", action="store_true", help=_ENSEMBLE_HELP)
    pr.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="predict the images that can be decoded instead of stopping at the first that cannot; the rest "
        "get no row in --output (as timm's inference script leaves out what it skips) and are listed in the log",
    )
    ex = _command(commands, "explain", help="Grad-CAM overlays: where in each image the evidence for a class lies")
    ex.add_argument("--checkpoint", required=True, help="a resnexus checkpoint or a run directory (see evaluate)")
    ex.add_argument("--input", required=True, help="an image or a folder (class sub-folders are read too)")
    ex.add_argument("--out", required=True, help="folder for <image>_gradcam.png files and explain.csv")
    ex.add_argument("--overwrite", action="store_true", help="replace the files of an earlier explain in --out")
    ex.add_argument("--target", help="class to explain (default: each image's predicted class)")
    ex.add_argument("--layer", help="module to look at (default: the model's last stage, e.g. layer4)")
    ex.add_argument("--ensemble", action="store_true", help=_ENSEMBLE_HELP + "; the map is the mean of their maps")
    ex.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="explain the images that can be decoded instead of stopping at the first that cannot; the rest "
        "get no overlay and no row in explain.csv, and are listed in the log",
    )
    exp = _command(
        commands,
        "export",
        help="export a checkpoint to ONNX (usable by predict/evaluate via onnxruntime), .keras or a TF SavedModel",
    )
    exp.add_argument("--checkpoint", required=True, help="a resnexus checkpoint or a run directory (see evaluate)")
    exp.add_argument("--output", required=True, help="the .onnx or .keras file, or the SavedModel folder, to write")
    exp.add_argument(
        "--format",
        default="onnx",
        choices=("onnx", "keras", "savedmodel"),
        help="onnx (default); keras: a .keras file; savedmodel: a TF SavedModel folder for TF Serving, whose "
        "signature takes float32 NHWC images in [0, 1] and returns probabilities (needs resnexus[keras])",
    )
    exp.add_argument("--opset", type=int, help="ONNX opset (default 18; --format onnx only)")
    exp.add_argument(
        "--overwrite", action="store_true", help="keras, savedmodel: replace an existing --output (ONNX always does)"
    )
    cd = _command(commands, "check-data", help="find unreadable, oversized, duplicate and misplaced images")
    cd.add_argument("data", help="class-folder tree (optionally train/ val/ test/) or a path,label CSV")
    cd.add_argument(
        "--max-pixels", type=int, help="larger images are refused as decompression bombs (default 100,000,000)"
    )
    cd.add_argument("--quiet", action="store_true", help="errors and warnings only, no notes")
    # check-data also splits the data as train would (these flags mean what they mean for train)
    _option(cd, "--val-fraction", type=float)
    _option(cd, "--test-fraction", type=float)
    _option(cd, "--group-by")
    _option(cd, "--seed", type=int)
    models = _command(commands, "models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnext*'")
    models.add_argument("--family", help="only this family (resnet, resnext, res2net, densenet, ...)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    models.add_argument(
        "--weights", action="store_true", help="list the published weights of the models instead (weights= tags)"
    )
    _add_serve(commands)
    return parser


_SERVE_EPILOG = """\
The server has no authentication. It binds 127.0.0.1 (this machine only) unless --host says
otherwise, and warns when it does. To let others in, keep it on 127.0.0.1 behind a reverse proxy
that authenticates over HTTPS (basic auth over plain HTTP shows the password), e.g. Caddy, which
gets a certificate itself (the hash from `caddy hash-password`):

  example.org {
      basic_auth {
          alice <hash>
      }
      reverse_proxy 127.0.0.1:8000
  }

or nginx, in a server block with TLS (users from `htpasswd -c /etc/nginx/resnexus.htpasswd alice`):

  location / {
      auth_basic "resnexus";
      auth_basic_user_file /etc/nginx/resnexus.htpasswd;
      client_max_body_size 64m;        # nginx refuses bodies over 1 MB by default
      proxy_pass http://127.0.0.1:8000;
  }
"""


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from .serve.options import BOUNDS, MIB, ServeOptions, argument_type  # no FastAPI: the flags' ranges

    sv = _command(
        commands, "serve", help="an HTTP API and a web page for a checkpoint (FastAPI + uvicorn)", epilog=_SERVE_EPILOG
    )
    default = ServeOptions()

    def bounded(flag: str, name: str, value: float, what: str) -> None:
        text = f"{what}: {BOUNDS[name].describe()} (default {value:g})"
        sv.add_argument(flag, type=argument_type(name), default=value, help=text)

    sv.add_argument("--checkpoint", required=True, help="a checkpoint, a run or cross-validation directory, or .onnx")
    sv.add_argument("--host", default=default.host, help=f"address to bind (default {default.host}: this machine only)")
    bounded("--port", "port", default.port, "port")
    bounded("--max-batch", "max_batch", default.max_batch, "images gathered into one batch at most")
    bounded("--max-wait-ms", "max_wait_ms", default.max_wait_ms, "how long a batch waits for more images")
    sv.add_argument("--no-batching", action="store_true", help="run every image as a batch of one")
    mb = default.limits.max_file_bytes / MIB
    bounded("--max-file-mb", "max_file_mb", mb, "largest upload per image")
    bounded("--max-files", "max_files", default.limits.max_files, "most images per request")


def _run_serve(args: argparse.Namespace) -> int:
    from .serve.options import MIB, Limits, ServeOptions

    max_file_bytes = max(1, round(args.max_file_mb * MIB))
    options = ServeOptions(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        limits=Limits(max_file_bytes=max_file_bytes, max_files=args.max_files),
    )
    try:
        from .serve import serve  # FastAPI, uvicorn: the serve extra
    except ImportError as error:
        raise ValueError(f"resnexus serve needs {error.name}: pip install 'resnexus[serve]'") from None
    serve(args.checkpoint, options)
    return 0


_LOG_HANDLER = "resnexus-cli"  # the name of the handler main() installs, so a second main() replaces it


@contextmanager
def _messages_on_stdout(level: int = logging.INFO) -> Iterator[None]:
    """While a command runs, the library's log messages are plain lines on the current sys.stdout.

    The handler is removed afterwards and the logger's settings restored, so calling ``main()``
    repeatedly in one process (tests, notebooks) neither stacks handlers nor changes what the
    library does outside the command. Not propagating avoids a second copy through a root handler.
    """
    package = logging.getLogger("resnexus")
    for stale in [h for h in package.handlers if h.get_name() == _LOG_HANDLER]:
        package.removeHandler(stale)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_LOG_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    try:
        yield
    finally:
        handler.flush()
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with _messages_on_stdout():
            return _dispatch(args, argv)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: one clear line
        print(f"resnexus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupted:
        if isinstance(interrupted, TrainingInterrupted):  # saved: say how to continue
            print(f"resnexus {args.command}: {interrupted}", file=sys.stderr)
            return interrupted.exit_code
        print(f"resnexus {args.command}: interrupted", file=sys.stderr)
        return getattr(interrupted, "exit_code", 130)


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "train":
        return _run_train(args, argv)
    if args.command == "compare":
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
    if args.command == "evaluate":
        metrics = evaluate(
            args.checkpoint,
            args.data,
            out=args.out,
            flip_tta=args.tta,
            ensemble=args.ensemble,
            overwrite=args.overwrite,
            positive_class=args.positive_class,
            skip_bad_images=args.skip_bad_images,
        )
        if positive := describe_positive_class(metrics):
            print(f"sensitivity / specificity: {positive}")
        for warning in metrics.get("warnings") or []:
            print(f"warning: {warning}")
        skipped = f" ({len(metrics['skipped'])} unreadable skipped)" if metrics.get("skipped") else ""
        print(f"{metrics['n']} images{skipped}: {format_metrics(metrics)}")  # last: the line a script reads
        return 0
    if args.command == "predict":
        written = predict(
            args.checkpoint,
            args.input,
            args.output,
            id_label=args.id_label,
            flip_tta=args.tta,
            ensemble=args.ensemble,
            overwrite=args.overwrite,
            model=args.model,
            weights=args.weights,
            weights_dir=args.weights_dir,
            skip_bad_images=args.skip_bad_images,
        )
        print(f"predictions: {written}")
        return 0
    if args.command == "export" and args.format != "onnx":
        if args.opset is not None:
            raise ValueError(f"--opset is an ONNX option; --format {args.format} does not use it")
        exported = export_keras(args.checkpoint, args.output, format=args.format, overwrite=args.overwrite)
        compared = "logit" if args.format == "keras" else "probability (serving signature)"
        kind = "Keras model" if args.format == "keras" else "TF SavedModel"
        print(
            f"{kind}: {exported.path}; read back vs PyTorch on a random batch: "
            f"max |{compared} difference| {exported.max_abs_diff:.2e}"
        )
        return 0
    if args.command == "export":
        result = export_onnx(args.checkpoint, args.output, opset=18 if args.opset is None else args.opset)
        print(
            f"ONNX model: {result.path} (opset {result.opset}); onnxruntime vs PyTorch on a random batch: "
            f"max |logit difference| {result.max_abs_diff:.2e}"
        )
        return 0
    if args.command == "check-data":
        given = {k: getattr(args, k) for k in ("val_fraction", "test_fraction", "group_by", "seed")}
        split = {k: v for k, v in given.items() if v is not None}  # unset: train's defaults
        report = check_data(args.data, max_pixels=args.max_pixels or MAX_PIXELS, **split)
        print(report.format(notes=not args.quiet))
        return 1 if report.errors else 0
    if args.command == "explain":
        csv_path = explain(
            args.checkpoint,
            args.input,
            args.out,
            target=args.target,
            layer=args.layer,
            ensemble=args.ensemble,
            overwrite=args.overwrite,
            skip_bad_images=args.skip_bad_images,
        )
        print(f"Grad-CAM overlays: {csv_path.parent} (index: {csv_path})")
        return 0
    if args.command == "serve":
        return _run_serve(args)
    if args.command == "models":
        names = list_models(args.pattern, family=args.family)  # an unknown family: one line listing them
        if not names:
            family = f" in family {args.family}" if args.family else ""
            print(f"resnexus models: error: no model matches {args.pattern!r}{family}", file=sys.stderr)
            return 2
        table = weights_table if args.weights else models_table
        print(table(names, markdown=args.markdown))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
