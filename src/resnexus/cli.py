"""The ``resnexus`` command: argument parsing only; every command calls a function of the API."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

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
    p = commands.add_parser("train", help="train and evaluate a model on an image folder (default: built-in digits)")
    p.add_argument("--data", help="folder with one sub-folder per class, or train/ [val/] [test/]; "
                   "omitted: scikit-learn's handwritten digits written as an image folder")  # fmt: skip
    p.add_argument("--model", help="registry name (see `resnexus models`); default resnext50_32x4d")
    p.add_argument("--out", help="run directory (default runs/<data>-<model>); never overwritten silently")
    p.add_argument("--weights", help="initial weights file or URL (torchvision, timm, Keras, resnexus)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 x batch/256 for SGD)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--image-size", type=int, help="default: the model's input size")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--group-by", help="regex on file names (or 'patient') keeping each group on one side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: from the machine)")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run directory")


def _run_train(args: argparse.Namespace) -> int:
    from .engine import TrainConfig, train

    config = TrainConfig(
        data=args.data, out=args.out, model=args.model, weights=args.weights, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        image_size=args.image_size, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        group_by=args.group_by, seed=args.seed, precision=args.precision, workers=args.workers,
        overwrite=args.overwrite,
    )  # fmt: skip
    train(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnexus", description="The ResNet family of image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    ev = commands.add_parser("evaluate", help="metrics of a checkpoint on a labelled image folder")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", required=True, help="folder with class sub-folders (or its test/ part)")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    pr = commands.add_parser("predict", help="predict images into a CSV file")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help="an image or a folder (read in natural sort order)")
    pr.add_argument("--output", required=True, help="CSV: path,label,prob_<class>...")
    pr.add_argument("--id-label", action="store_true", help="write a Kaggle-style id,label file instead")
    models = commands.add_parser("models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnext*'")
    models.add_argument("--family", help="only this family (resnet, resnext, res2net, densenet, ...)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # bad input: one clear line
        print(f"resnexus {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnexus {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _run_train(args)
    if args.command == "evaluate":
        from .engine import evaluate
        from .reports import format_metrics

        metrics = evaluate(args.checkpoint, args.data, out=args.out)
        print(f"{metrics['n']} images: {format_metrics(metrics)}")
        return 0
    if args.command == "predict":
        from .engine import predict

        print(f"predictions: {predict(args.checkpoint, args.input, args.output, id_label=args.id_label)}")
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
