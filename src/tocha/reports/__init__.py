"""Run reports: PNG plots and a self-contained HTML page.

Importing this package stays cheap (no matplotlib at import time): the names below resolve
lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tocha.reports.html import write_report
    from tocha.reports.plots import plot_confusion, plot_curves, plot_regression

_LAZY = {
    "plot_confusion": "tocha.reports.plots",
    "plot_curves": "tocha.reports.plots",
    "plot_regression": "tocha.reports.plots",
    "write_report": "tocha.reports.html",
}

__all__ = ["plot_confusion", "plot_curves", "plot_regression", "write_report"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
