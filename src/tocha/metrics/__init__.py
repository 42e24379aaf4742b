"""Evaluation metrics.

Importing this package stays cheap (``tocha --help`` must not pull in numpy or scikit-learn):
the names below resolve lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tocha.metrics.names import METRIC_NAMES, default_mode

if TYPE_CHECKING:
    from tocha.metrics.classification import ClassificationMetrics, ClassRow, classification_metrics
    from tocha.metrics.regression import RegressionMetrics, regression_metrics

_LAZY = {
    "ClassificationMetrics": "tocha.metrics.classification",
    "ClassRow": "tocha.metrics.classification",
    "classification_metrics": "tocha.metrics.classification",
    "RegressionMetrics": "tocha.metrics.regression",
    "regression_metrics": "tocha.metrics.regression",
}

__all__ = [
    "METRIC_NAMES",
    "ClassRow",
    "ClassificationMetrics",
    "RegressionMetrics",
    "classification_metrics",
    "default_mode",
    "regression_metrics",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
