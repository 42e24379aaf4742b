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

_LAZY = {
    "ClassificationMetrics": "tocha.metrics.classification",
    "ClassRow": "tocha.metrics.classification",
    "classification_metrics": "tocha.metrics.classification",
}

__all__ = [
    "METRIC_NAMES",
    "ClassRow",
    "ClassificationMetrics",
    "classification_metrics",
    "default_mode",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
