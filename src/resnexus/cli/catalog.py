"""``models``: the registered architectures and their published weights, as tables.

The tables are public because the reference pages print them too (docs/gen_pages.py), so the
README's model zoo and ``resnexus models --markdown`` are one table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..models.registry import ModelInfo, list_models, list_pretrained, model_info
from ..reports import markdown_table
from .command import Command


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


def add_models_arguments(models: argparse.ArgumentParser) -> None:
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnext*'")
    models.add_argument("--family", help="only this family (resnet, resnext, res2net, densenet, ...)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    models.add_argument(
        "--weights", action="store_true", help="list the published weights of the models instead (weights= tags)"
    )


def run_models(args: argparse.Namespace, argv: Sequence[str]) -> int:
    names = list_models(args.pattern, family=args.family)  # an unknown family: one line listing them
    if not names:
        family = f" in family {args.family}" if args.family else ""
        print(f"resnexus models: error: no model matches {args.pattern!r}{family}", file=sys.stderr)
        return 2
    table = weights_table if args.weights else models_table
    print(table(names, markdown=args.markdown))
    return 0


MODELS = Command("models", "list the registered models with parameters and MACs", add_models_arguments, run_models)
