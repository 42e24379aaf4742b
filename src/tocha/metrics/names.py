"""Metric names and their optimisation direction, importable without numpy or scikit-learn.

Config validation (``monitor=val.<name>``) runs before any heavy import, so the names live here
rather than next to the code that computes them.
"""

from __future__ import annotations

from typing import Literal

# Suffixes that ClassificationMetrics.flat() can emit with the default top_k=(5,), plus "loss",
# which the engine adds itself. roc_auc / pr_auc only appear for two-class data.
METRIC_NAMES: tuple[str, ...] = (
    "loss",
    "accuracy",
    "top5_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "pr_auc",
    "bpc",  # text: bits per character on the validation split
    "perplexity",  # text: exp(nats per character)
    "mae",  # regression (RegressionMetrics.flat), in the target's units
    "rmse",
    "r2",
)
_LOWER_IS_BETTER = ("loss", "bpc", "perplexity", "mae", "rmse")


def default_mode(metric_name: str) -> Literal["max", "min"]:
    """'min' for losses and errors, 'max' for everything else; accepts 'loss' or a prefixed 'val.loss'."""
    suffix = metric_name.rsplit(".", 1)[-1]
    return "min" if suffix in _LOWER_IS_BETTER else "max"
