"""Evaluation metrics, plots, Markdown tables and the Markdown report of a training run."""

from .metrics import classification_metrics, describe_positive_class, format_metrics, resolve_positive_class
from .plots import plot_accuracy_vs_macs, plot_confusion_matrix, plot_history, plot_roc, save_figure
from .report import write_report
from .tables import MISSING, fixed_decimals, markdown_cell, markdown_table

__all__ = [
    "MISSING",
    "classification_metrics",
    "describe_positive_class",
    "fixed_decimals",
    "format_metrics",
    "markdown_cell",
    "markdown_table",
    "plot_accuracy_vs_macs",
    "plot_confusion_matrix",
    "plot_history",
    "plot_roc",
    "resolve_positive_class",
    "save_figure",
    "write_report",
]
