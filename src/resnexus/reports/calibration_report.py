"""The "How sure the model is" section of cv_report.md, and its one log line.

Read from ``record["calibration"]``, the summary engine/out_of_fold.py fits on the out-of-fold
predictions: the temperature, ECE / Brier / NLL before and after it, the coverage and size of the
prediction sets on those images, and the operating point when one was asked for.
"""

from __future__ import annotations

from typing import Any

from .tables import fixed_decimals, markdown_cell, markdown_table

__all__ = ["calibration_markdown", "describe_calibration"]

_SCORES = (("ece", "ECE (10 bins)"), ("brier", "Brier score"), ("nll", "NLL"))


def describe_calibration(summary: dict[str, Any]) -> str:
    """``calibration: temperature 1.31, ECE 0.081 -> 0.035, NLL ...; threshold ...``: one line for the log."""
    before, after = summary["before"], summary["after"]
    scores = ", ".join(
        f"{key.upper() if key != 'brier' else 'Brier'} {before[key]:.3f} -> {after[key]:.3f}" for key, _ in _SCORES
    )
    line = f"calibration on {summary['images']} out-of-fold images: temperature {summary['temperature']:.3f}, {scores}"
    point = summary.get("operating_point")
    if point:
        line += (
            f"; threshold {point['threshold']:.4f} on P({point['positive_class']}): out-of-fold sensitivity "
            f"{point['sensitivity']:.3f}, specificity {point['specificity']:.3f}"
        )
    return line


def calibration_markdown(record: dict[str, Any]) -> str:
    """The report section, or "" for a record without a calibration (a run from before it existed)."""
    summary = record.get("calibration")
    if not summary:
        return ""
    files = summary.get("files", {})
    md = [
        "## How sure the model is",
        "",
        f"Fitted on the **out-of-fold predictions** of all {summary['images']} images "
        f"(`{files.get('oof_predictions', '')}`): each image predicted by the fold model that never saw it. "
        f"Stored in `{files.get('calibration', '')}`; `predict`, `evaluate` and `serve` apply it to the deployable "
        "model's probabilities (`--no-calibration` shows the raw ones).",
        "",
        *_temperature_lines(summary),
        *_set_lines(summary),
        *_operating_point_lines(summary),
    ]
    return "\n".join(md) + "\n"


def _temperature_lines(summary: dict[str, Any]) -> list[str]:
    t = summary["temperature"]
    if not summary.get("temperature_scaling", True):
        how = "not fitted (`--no-temperature-scaling`): the probabilities are the model's own."
    elif t > 1:
        how = "above 1: the model was over-confident, and its probabilities are softened."
    else:
        how = "at most 1: the model was under-confident, and its probabilities are sharpened."
    rows = [
        [label, fixed_decimals(summary["before"][key]), fixed_decimals(summary["after"][key])] for key, label in _SCORES
    ]
    md = [
        f"**Temperature scaling:** T = {t:.3f}, {how} It divides the log-probabilities, so the top class "
        "never changes; lower is better for all three scores.",
        "",
        markdown_table(["out-of-fold images", "before", "after"], rows, "lrr"),
        "",
    ]
    if summary.get("reliability_plot"):
        md += [f"![Reliability diagram, before and after calibration]({summary['reliability_plot']})", ""]
    return md


def _set_lines(summary: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{c['coverage_target']:g}",
            fixed_decimals(c["coverage"], 3),
            fixed_decimals(c["mean_set_size"], 2),
            ", ".join(f"{markdown_cell(name)} {value:.3f}" for name, value in c["coverage_per_class"].items()),
        ]
        for c in summary["coverage"]
    ]
    return [
        "**Prediction sets** (`predict --coverage C` adds a `set` column: every class the model cannot rule out). "
        "On the out-of-fold images:",
        "",
        markdown_table(["coverage asked", "sets holding the true class", "mean set size", "per class"], rows, "rrrl"),
        "",
        "These are measured on the same images whose scores made the sets, so they check the arithmetic, not "
        "the guarantee. The guarantee (at least C of the sets hold the true class, for new images like these) "
        "can only be measured on images the run never used: `evaluate --coverage C` on a labelled folder of them.",
        "",
    ]


def _operating_point_lines(summary: dict[str, Any]) -> list[str]:
    point, md = summary.get("operating_point"), []
    if point:
        target = ", ".join(f"{name} {value:g}" for name, value in point["target"].items())
        md += [
            f"**Operating point** (target {target}): predict {markdown_cell(point['positive_class'])} when its "
            f"calibrated probability is at least **{point['threshold']:.4f}**. On the out-of-fold images: "
            f"sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}.",
            "",
        ]
    if summary.get("roc_plot"):
        md += [f"![Out-of-fold ROC curve]({summary['roc_plot']})", ""]
    return md
