"""Markdown cells cannot break a table; every report marks a missing value the same way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnexus.reports import MISSING, fixed_decimals, markdown_cell, markdown_table


def _cells(line: str) -> list[str]:
    """Split a table line the way a Markdown renderer does: on pipes not escaped with a backslash."""
    parts, cell, chars = [], "", iter(line.strip()[1:-1])
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars)
        elif ch == "|":
            parts.append(cell.strip())
            cell = ""
        else:
            cell += ch
    return [*parts, cell.strip()]


def test_cell_escapes_pipes_backslashes_and_line_breaks():
    assert markdown_cell("toy | 10 images") == "toy \\| 10 images"
    assert markdown_cell("C:\\data") == "C:\\\\data"
    assert markdown_cell("a\\|b") == "a\\\\\\|b"  # a backslash before a pipe cannot swallow its escape
    assert markdown_cell("two\nlines\r\nhere") == "two lines  here"
    assert markdown_cell("Monkey Pox") == "Monkey Pox"


def test_cell_formats_values():
    assert markdown_cell(12.3456) == "12.3456"
    assert markdown_cell(1 / 3) == "0.333333"
    assert markdown_cell(5) == "5" and markdown_cell(True) == "True"
    assert markdown_cell((1, 1, 1)) == "(1, 1, 1)"


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")])
def test_one_mark_for_a_missing_value(value):
    assert MISSING == "n/a"
    assert markdown_cell(value) == MISSING
    assert fixed_decimals(value) == MISSING


def test_fixed_decimals_has_fixed_decimals():
    assert fixed_decimals(0.7) == "0.7000"
    assert fixed_decimals(23 / 33) == "0.6970"
    assert fixed_decimals(np.float32(0.5), digits=2) == "0.50"
    assert fixed_decimals(1) == "1.0000"


def test_full_table():
    rows = [
        [markdown_cell("cat | kitten"), fixed_decimals(0.91234), markdown_cell(12)],
        [markdown_cell("dog"), fixed_decimals(None), markdown_cell("line\nbreak")],
    ]
    text = markdown_table(["class", "F1", "support"], rows, "lrr")
    assert text == (
        "| class | F1 | support |\n| --- | ---: | ---: |\n| cat \\| kitten | 0.9123 | 12 |\n| dog | n/a | line break |"
    )
    lines = text.splitlines()
    assert all(len(_cells(line)) == 3 for line in lines)  # the escaped pipe stayed inside its cell
    assert _cells(lines[2])[0] == "cat \\| kitten"


def test_table_keeps_markdown_in_cells_and_defaults_to_left_alignment():
    text = markdown_table(["true \\ predicted", "a"], [["**a**", "[report](fold1/report.md)"]])
    assert text.splitlines() == ["| true \\ predicted | a |", "| --- | --- |", "| **a** | [report](fold1/report.md) |"]
    assert markdown_table(["only"], []) == "| only |\n| --- |"


def test_table_refuses_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown_table(["a", "b", "c"], [["1", "2"]])
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], "lc")
