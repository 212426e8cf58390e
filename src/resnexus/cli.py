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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnexus", description="The ResNet family of image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="list the registered models with parameters and MACs")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnext*'")
    models.add_argument("--family", help="only this family (resnet, resnext, res2net, densenet, ...)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (as in the README)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        names = list_models(args.pattern, family=args.family)
        if not names:
            print(f"resnexus: no model matches {args.pattern!r}", file=sys.stderr)
            return 2
        print(models_table(names, markdown=args.markdown))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
