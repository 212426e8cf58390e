"""The ``resnexus`` command: argument parsing only; every command calls a function of the API."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .models.registry import ModelInfo, list_models, model_info


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
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i in (2, 3) else '<'}{w}}}" for i, w in enumerate(widths[:-1])) + "  {}"
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def _add_train(commands: argparse._SubParsersAction) -> None:
    # Flags default to SUPPRESS so that only what was typed overrides --config and the defaults.
    p = commands.add_parser("train", help="train and evaluate a model on an image folder (default: built-in digits)",
                            argument_default=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--model", help="registry name (see `resnexus models`); default resnext50_32x4d")
    p.add_argument("--out", help="run directory (default runs/<data>-<model>); never overwritten silently")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--weights", help="initial weights file or URL (torchvision, timm, Keras, resnexus)")
    p.add_argument("--folds", type=int, help="K-fold cross-validation (stratified, grouped): each fold is the test "
                   "set once, validation is --val-fraction of the rest; reports mean +- std")  # fmt: skip
    p.add_argument("--nproc", type=int, help="train data-parallel in N processes on this machine "
                   "(runs torchrun --standalone --nproc_per_node N); --batch-size is the global batch")  # fmt: skip
    _add_recipe_flags(p)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("compare", help="train several models on the same split and recipe, side by side",
                            argument_default=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--models", required=True, help="comma-separated registry names")
    p.add_argument("--out", required=True, help="folder for the runs, comparison.md/.csv and the plot")
    p.add_argument("--no-isolate", dest="no_isolate", action="store_true",
                   help="train in this process (faster; peak memory is then not measured on CPU)")  # fmt: skip
    _add_recipe_flags(p)


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """The data and training-recipe flags `train` and `compare` share."""
    p.add_argument("--data", help="folder with one sub-folder per class, or train/ [val/] [test/]; "
                   "omitted: scikit-learn's handwritten digits written as an image folder")  # fmt: skip
    p.add_argument("--config", dest="config_file", help="YAML file of TrainConfig fields; flags override it")
    p.add_argument("--epochs", type=int, help="default 90 (tuned for a few hundred images)")
    p.add_argument("--batch-size", type=int, help="default 16 (the global batch with --nproc)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 for AdamW, 0.1 x batch/256 for SGD)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default adamw")
    p.add_argument("--weight-decay", type=float, help="default 0.05 (AdamW) or 5e-4 (SGD); never on norms and biases")
    p.add_argument("--warmup-epochs", type=float, help="default 5")
    p.add_argument("--label-smoothing", type=float, help="default 0.1")
    p.add_argument("--image-size", type=int, help="default 128 for 224-px models from scratch, else the model's size")
    p.add_argument("--val-fraction", type=float, help="default 0.1")
    p.add_argument("--test-fraction", type=float, help="default 0.2")
    p.add_argument("--group-by", help="regex on file names (or 'patient') keeping each group on one side")
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--mixup", type=float, help="Mixup alpha (0.2 is the paper's ImageNet value)")
    p.add_argument("--cutmix", type=float, help="CutMix alpha (1.0 is the paper's value)")
    p.add_argument("--ema", dest="ema_decay", type=float, help="EMA decay of the weights, e.g. 0.999")
    p.add_argument("--clip-grad", dest="clip_grad_norm", type=float, help="clip the gradient norm to this")
    p.add_argument("--early-stopping", type=int, help="stop after N epochs without better val accuracy")
    p.add_argument("--balance", choices=("none", "loss", "sampler"),
                   help="imbalanced data: 'loss' weights the loss by class, 'sampler' draws balanced batches")
    p.add_argument("--tta", action="store_true", help="validate and test on image + mirror image (flip averaging)")
    p.add_argument("--select", choices=("auto", "val", "last"),
                   help="best.pt: 'val' best validation accuracy, 'last' final weights; 'auto' (default): "
                   "'val' with >= 100 validation images, else 'last'")  # fmt: skip
    p.add_argument("--positive-class", help="two classes: the class sensitivity refers to (default: the second)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (a slow start; no gain on 2 CPU cores, measured)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard events to RUN_DIR/tensorboard")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: from the machine)")
    p.add_argument("--cache-dir", help="where decoded images are kept between runs (default: ~/.cache/resnexus/"
                   "decoded or $RESNEXUS_CACHE_DIR); 'off': decode every run")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run directory")
    p.add_argument("--checkpoint-every", type=float, help="seconds between resumable checkpoints (default 60; 0: every epoch)")
    p.add_argument("--sync-bn", action="store_true", help="several GPU processes: BatchNorm over the global batch")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="train on the readable images instead of refusing to start; the report lists the rest")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """TrainConfig from (in rising priority) its defaults, a --config YAML file, the typed flags."""
    from .data import AugmentConfig
    from .engine import TrainConfig
    from .engine.fit import resume_config

    not_config = ("command", "config_file", "resume", "folds", "models", "no_isolate", "nproc")
    given = {k: v for k, v in vars(args).items() if k not in not_config}
    if getattr(args, "resume", None):
        config = resume_config(args.resume)
        return dataclasses.replace(config, **{k: v for k, v in given.items() if k in ("workers", "cache_dir", "verbose")})
    values: dict[str, Any] = {}
    if getattr(args, "config_file", None):
        import yaml

        path = Path(args.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
    return TrainConfig(**(values | given))


def _run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .engine import train

    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(nproc, argv)
    config = train_config_from_args(args)
    folds = getattr(args, "folds", None)
    if folds is not None:
        from .engine.crossval import cross_validate

        cross_validate(config, folds)
    else:
        train(config)
    return 0


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``train --nproc N``: the same command under torchrun, N processes on this machine."""
    import subprocess

    rest, skip = [], False
    for arg in argv:  # drop --nproc N / --nproc=N, keep everything else as typed
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "resnexus", *rest]  # fmt: skip
    print("launching: " + " ".join(command[1:]), flush=True)
    return subprocess.call(command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnexus", description="The ResNet family of image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_compare(commands)
    ev = commands.add_parser("evaluate", help="metrics of a checkpoint on a labelled image folder")
    ev.add_argument("--checkpoint", required=True, help="a resnexus checkpoint, or an exported .onnx file")
    ev.add_argument("--data", required=True, help="folder with class sub-folders (or its test/ part)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    ev.add_argument("--tta", action="store_true", help="average each image's and its mirror's probabilities")
    pr = commands.add_parser("predict", help="predict images into a CSV file")
    pr.add_argument("--checkpoint", required=True, help="a resnexus checkpoint, or an exported .onnx file")
    pr.add_argument("--input", required=True, help="an image or a folder (read in natural sort order)")
    pr.add_argument("--output", required=True, help="CSV: path,label,prob_<class>...")
    pr.add_argument("--id-label", action="store_true", help="write a Kaggle-style id,label file instead")
    pr.add_argument("--tta", action="store_true", help="average each image's and its mirror's probabilities")
    ex = commands.add_parser("explain", help="Grad-CAM overlays: where in each image the evidence for a class lies")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--input", required=True, help="an image or a folder (class sub-folders are read too)")
    ex.add_argument("--out", required=True, help="folder for <image>_gradcam.png files and explain.csv")
    ex.add_argument("--target", help="class to explain (default: each image's predicted class)")
    ex.add_argument("--layer", help="module to look at (default: the model's last stage, e.g. layer4)")
    exp = commands.add_parser("export", help="export a checkpoint to ONNX (usable by predict/evaluate via onnxruntime)")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--output", required=True, help="the .onnx file to write")
    exp.add_argument("--format", default="onnx", choices=("onnx",))
    exp.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    cd = commands.add_parser("check-data", help="find unreadable, oversized, duplicate and misplaced images")
    cd.add_argument("data", help="class-folder tree (optionally train/ val/ test/) or a path,label CSV")
    cd.add_argument("--max-pixels", type=int, help="larger images are refused as decompression bombs "
                    "(default 100,000,000)")  # fmt: skip
    cd.add_argument("--quiet", action="store_true", help="errors and warnings only, no notes")
    models = commands.add_parser("models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnext*'")
    models.add_argument("--family", help="only this family (resnet, resnext, res2net, densenet, ...)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: one clear line
        print(f"resnexus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupted:
        from .engine.interrupt import TrainingInterrupted

        if isinstance(interrupted, TrainingInterrupted):  # saved: say how to continue
            print(f"resnexus {args.command}: {interrupted}", file=sys.stderr)
            return interrupted.exit_code
        print(f"resnexus {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "train":
        return _run_train(args, argv)
    if args.command == "compare":
        from .engine.comparison import compare

        base = train_config_from_args(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "out"}))
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        result = compare(models, base, args.out, isolate=not getattr(args, "no_isolate", False))
        best = result.best
        print(f"comparison: {result.markdown}" + (f" (best: {best['model']})" if best else ""))
        return 0
    if args.command == "evaluate":
        from .engine import evaluate
        from .reports import format_metrics

        metrics = evaluate(args.checkpoint, args.data, out=args.out, flip_tta=args.tta)
        print(f"{metrics['n']} images: {format_metrics(metrics)}")
        return 0
    if args.command == "predict":
        from .engine import predict

        written = predict(args.checkpoint, args.input, args.output, id_label=args.id_label, flip_tta=args.tta)
        print(f"predictions: {written}")
        return 0
    if args.command == "export":
        from .engine.export import export_onnx

        result = export_onnx(args.checkpoint, args.output, opset=args.opset)
        print(f"ONNX model: {result.path} (opset {result.opset}); onnxruntime vs PyTorch on a random batch: "
              f"max |logit difference| {result.max_abs_diff:.2e}")  # fmt: skip
        return 0
    if args.command == "check-data":
        from .data.check import MAX_PIXELS, check_data

        report = check_data(args.data, max_pixels=args.max_pixels or MAX_PIXELS)
        print(report.format(notes=not args.quiet))
        return 1 if report.errors else 0
    if args.command == "explain":
        from .engine.explain import explain

        csv_path = explain(args.checkpoint, args.input, args.out, target=args.target, layer=args.layer)
        print(f"Grad-CAM overlays: {csv_path.parent} (index: {csv_path})")
        return 0
    if args.command == "models":
        names = list_models(args.pattern, family=args.family)
        if not names:
            print(f"resnexus: no model matches {args.pattern!r}", file=sys.stderr)
            return 2
        print(models_table(names, markdown=args.markdown))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
