"""Evaluation metrics, plots and a Markdown report for a training run."""

from .metrics import classification_metrics, format_metrics
from .report import plot_confusion_matrix, plot_history, plot_roc, write_report

__all__ = [
    "classification_metrics",
    "format_metrics",
    "plot_history",
    "plot_confusion_matrix",
    "plot_roc",
    "write_report",
]
