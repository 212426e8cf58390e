"""Markdown tables for every report resnexus writes (a run, cross-validation, a comparison).

One home for the cell and number rules, so every report and log line marks a missing value the same
way and no value (a class name with a "|", an error message with a newline) can break a table.
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write

__all__ = ["MISSING", "csv_value", "fixed_decimals", "markdown_cell", "markdown_table", "write_csv"]

MISSING = "n/a"  # the mark for a value that does not exist (an undefined ROC-AUC, a model that failed)


def _is_missing(value: object) -> bool:
    """None, and numbers that are NaN or infinite: nothing a reader can use."""
    return value is None or (isinstance(value, numbers.Real) and not math.isfinite(value))


def markdown_cell(value: object) -> str:
    """``value`` as the text of one Markdown table cell.

    Missing values (None, NaN, infinities) become :data:`MISSING`, floats keep six significant
    digits, and backslashes, pipes and line breaks are escaped or flattened so the cell stays one
    cell on one line.
    """
    if _is_missing(value):
        text = MISSING
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def fixed_decimals(value: object, digits: int = 4) -> str:
    """A metric (accuracy, F1, a standard deviation, ...) with ``digits`` decimals, or :data:`MISSING`.

    Table cells and one-line summaries (``format_metrics``, cross-validation's mean ± std) alike.
    """
    if _is_missing(value):
        return MISSING
    return f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (lines joined with "\\n", no trailing newline).

    Cells are written as given, so a caller can put Markdown in them (``**bold**``, a link):
    pass raw values through :func:`markdown_cell` or :func:`fixed_decimals` first. ``align`` has one
    letter per column, "l" (left, the default) or "r" (right: numbers).
    """
    align = align if align is not None else "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one 'l' or 'r' per column ({len(header)}), got {align!r}")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {list(row)}")
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def csv_value(value: Any) -> str:
    """A CSV cell: plain numbers (floats as ``repr``, every digit kept), an empty cell for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    """``rows`` as a CSV file with ``columns`` in this order (a key a row lacks: an empty cell), written atomically."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_value(row.get(key)) for key in columns])
    return path
