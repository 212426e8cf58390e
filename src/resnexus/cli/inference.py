"""``evaluate``, ``predict``, ``explain`` and ``export``: the commands that use a trained model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..engine import evaluate, predict
from ..engine.explain import explain
from ..engine.export import export_keras, export_onnx
from ..reports import describe_positive_class, format_metrics
from .command import Command
from .guide import CHECKPOINT_HELP, ENSEMBLE_HELP

EXPORT_FORMATS = ("onnx", "keras", "savedmodel")
DEFAULT_OPSET = 18


def add_skip_bad_images(parser: argparse.ArgumentParser, verb: str, the_rest: str) -> None:
    """``--skip-bad-images`` of the commands that read a model's input images: ``verb`` says what is done
    with the readable ones, ``the_rest`` what becomes of the others."""
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help=f"{verb} the images that can be decoded instead of stopping at the first that cannot; {the_rest}",
    )


# -- how sure: shared by evaluate and predict ------------------------------------------------------
def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-calibration",
        dest="calibrated",
        action="store_false",
        help="the model's raw probabilities and top class, without the calibration a `train --folds` run "
        "stored (temperature, operating threshold)",
    )
    p.add_argument(
        "--coverage",
        type=float,
        help="prediction sets: every class the model cannot rule out, holding the true class for at least this "
        "share of images like the training ones, e.g. 0.9 (needs a `train --folds` run's calibration)",
    )
    p.add_argument(
        "--per-class-coverage",
        action="store_true",
        help="with --coverage: the coverage held within each true class (Mondrian sets), not just on average",
    )


def calibration_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return dict(calibrated=args.calibrated, coverage=args.coverage, per_class_coverage=args.per_class_coverage)


def describe_sureness(metrics: dict[str, Any]) -> list[str]:
    """evaluate's lines about the calibration and, with --coverage, the prediction sets."""
    scores = metrics["calibration"]
    how = f"temperature {metrics['temperature']:.3f}" if metrics.get("calibrated") else "raw probabilities"
    if metrics.get("threshold") is not None:
        how += f", threshold {metrics['threshold']:.4f}"
    lines = [f"calibration ({how}): ECE {scores['ece']:.3f} | Brier {scores['brier']:.3f} | NLL {scores['nll']:.3f}"]
    if "coverage" in metrics:
        per_class = ", ".join(f"{name} {v:.3f}" for name, v in metrics["coverage_per_class"].items())
        lines.append(
            f"prediction sets (coverage {metrics['coverage_target']:g}): {metrics['coverage']:.3f} hold the true "
            f"class, mean size {metrics['mean_set_size']:.2f} (per class: {per_class})"
        )
    return lines


# -- evaluate -------------------------------------------------------------------------------------
def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    ev.add_argument("--data", required=True, help="folder with class sub-folders (or its test/ part)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    ev.add_argument("--tta", action="store_true", help="average each image's and its mirror's probabilities")
    ev.add_argument("--ensemble", action="store_true", help=ENSEMBLE_HELP)
    ev.add_argument(
        "--positive-class",
        help="two classes: the class sensitivity, specificity and ROC are about (default: the run's choice, "
        "else a class not named like others/normal/healthy/benign/control, else the second in sorted order)",
    )
    add_skip_bad_images(ev, "evaluate on", "the rest are listed in the log and under 'skipped' in --out")
    add_calibration_arguments(ev)


def run_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    metrics = evaluate(
        args.checkpoint,
        args.data,
        out=args.out,
        flip_tta=args.tta,
        ensemble=args.ensemble,
        overwrite=args.overwrite,
        positive_class=args.positive_class,
        skip_bad_images=args.skip_bad_images,
        **calibration_arguments(args),
    )
    if positive := describe_positive_class(metrics):
        print(f"sensitivity / specificity: {positive}")
    for line in describe_sureness(metrics):
        print(line)
    for warning in metrics.get("warnings") or []:
        print(f"warning: {warning}")
    if metrics.get("ci_method"):
        print(f"{metrics['ci_method']} (in brackets below)")
    skipped = f" ({len(metrics['skipped'])} unreadable skipped)" if metrics.get("skipped") else ""
    print(f"{metrics['n']} images{skipped}: {format_metrics(metrics)}")  # last: the line a script reads
    return 0


# -- predict --------------------------------------------------------------------------------------
def add_predict_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--checkpoint", help=CHECKPOINT_HELP)
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
    pr.add_argument("--ensemble", action="store_true", help=ENSEMBLE_HELP)
    add_skip_bad_images(
        pr,
        "predict",
        "the rest get no row in --output (as timm's inference script leaves out what it skips) and are listed "
        "in the log",
    )
    add_calibration_arguments(pr)


def run_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
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
        **calibration_arguments(args),
    )
    print(f"predictions: {written}")
    return 0


# -- explain --------------------------------------------------------------------------------------
def add_explain_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--checkpoint", required=True, help="a resnexus checkpoint or a run directory (see evaluate)")
    ex.add_argument("--input", required=True, help="an image or a folder (class sub-folders are read too)")
    ex.add_argument("--out", required=True, help="folder for <image>_gradcam.png files and explain.csv")
    ex.add_argument("--overwrite", action="store_true", help="replace the files of an earlier explain in --out")
    ex.add_argument("--target", help="class to explain (default: each image's predicted class)")
    ex.add_argument("--layer", help="module to look at (default: the model's last stage, e.g. layer4)")
    ex.add_argument("--ensemble", action="store_true", help=ENSEMBLE_HELP + "; the map is the mean of their maps")
    add_skip_bad_images(ex, "explain", "the rest get no overlay and no row in explain.csv, and are listed in the log")
    add_calibration_arguments(ex)


def run_explain(args: argparse.Namespace, argv: Sequence[str]) -> int:
    csv_path = explain(
        args.checkpoint,
        args.input,
        args.out,
        target=args.target,
        layer=args.layer,
        ensemble=args.ensemble,
        overwrite=args.overwrite,
        skip_bad_images=args.skip_bad_images,
        **calibration_arguments(args),
    )
    print(f"Grad-CAM overlays: {csv_path.parent} (index: {csv_path})")
    return 0


# -- export ---------------------------------------------------------------------------------------
def add_export_arguments(exp: argparse.ArgumentParser) -> None:
    exp.add_argument("--checkpoint", required=True, help="a resnexus checkpoint or a run directory (see evaluate)")
    exp.add_argument("--output", required=True, help="the .onnx or .keras file, or the SavedModel folder, to write")
    exp.add_argument(
        "--format",
        default="onnx",
        choices=EXPORT_FORMATS,
        help="onnx (default); keras: a .keras file; savedmodel: a TF SavedModel folder for TF Serving, whose "
        "signature takes float32 NHWC images in [0, 1] and returns probabilities (needs resnexus[keras])",
    )
    exp.add_argument("--opset", type=int, help=f"ONNX opset (default {DEFAULT_OPSET}; --format onnx only)")
    exp.add_argument(
        "--overwrite", action="store_true", help="keras, savedmodel: replace an existing --output (ONNX always does)"
    )


def run_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.format == "onnx":
        opset = DEFAULT_OPSET if args.opset is None else args.opset
        result = export_onnx(args.checkpoint, args.output, opset=opset)
        print(
            f"ONNX model: {result.path} (opset {result.opset}); onnxruntime vs PyTorch on a random batch: "
            f"max |logit difference| {result.max_abs_diff:.2e}"
        )
        return 0
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


EVALUATE = Command(
    "evaluate", "metrics of a checkpoint on a labelled image folder", add_evaluate_arguments, run_evaluate
)
PREDICT = Command("predict", "predict images into a CSV file", add_predict_arguments, run_predict)
EXPLAIN = Command(
    "explain",
    "Grad-CAM overlays: where in each image the evidence for a class lies",
    add_explain_arguments,
    run_explain,
)
EXPORT = Command(
    "export",
    "export a checkpoint to ONNX (usable by predict/evaluate via onnxruntime), .keras or a TF SavedModel",
    add_export_arguments,
    run_export,
)
