"""Regression metrics as one frozen value, computed with scikit-learn.

MAE, RMSE and R² come from ``mean_absolute_error``, ``mean_squared_error`` (square-rooted here) and
``r2_score``, in the units of the values passed in: unscale standardised predictions first
(``TabularData.to_original``) so the numbers read in the target's own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from tocha.metrics.classification import _to_numpy

__all__ = ["RegressionMetrics", "regression_metrics"]


@dataclass(frozen=True)
class RegressionMetrics:
    """Everything the CLI prints and the report renders about one regression evaluation split."""

    mae: float
    rmse: float
    r2: float  # nan when y_true is constant (sklearn's r2_score is undefined there)
    n: int  # number of examples

    def flat(self, prefix: str) -> dict[str, float]:
        """Scalar metrics keyed '{prefix}.{name}', for logging, monitoring and the summary."""
        return {f"{prefix}.mae": self.mae, f"{prefix}.rmse": self.rmse, f"{prefix}.r2": self.r2}

    def to_dict(self) -> dict[str, Any]:
        return {"mae": self.mae, "rmse": self.rmse, "r2": self.r2, "n": self.n}

    def report_text(self) -> str:
        return (
            "\n".join(
                f"{name:>5}  {value:.4f}" for name, value in (("MAE", self.mae), ("RMSE", self.rmse), ("R2", self.r2))
            )
            + f"\n{self.n:>5}  rows"
        )

    def headline(self, loss: float) -> str:
        return f"RMSE {self.rmse:.4f}  MAE {self.mae:.4f}  R2 {self.r2:.4f}  loss {loss:.4f} (standardised MSE)"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegressionMetrics:
        """Inverse of :meth:`to_dict` (also after a JSON round trip)."""
        return cls(mae=float(data["mae"]), rmse=float(data["rmse"]), r2=float(data["r2"]), n=int(data["n"]))


def regression_metrics(y_true: Any, y_pred: Any) -> RegressionMetrics:
    """MAE, RMSE and R² of predictions ``y_pred`` against ``y_true``, both [N] (or [N, 1]).

    Accepts numpy arrays or torch tensors. A diverged model's NaN/inf predictions give inf errors
    and nan R² rather than an exception, so an evaluation never crashes the run.
    """
    true = _to_numpy(y_true).astype(np.float64)
    pred = _to_numpy(y_pred).astype(np.float64)
    if true.ndim == 2 and true.shape[1] == 1:
        true = true[:, 0]
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must have shape [N], got {list(true.shape)} and {list(pred.shape)}")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.shape[0]} values but y_pred has {pred.shape[0]}")
    if true.shape[0] == 0:
        raise ValueError("cannot compute metrics on 0 samples")
    n = int(true.shape[0])
    if not np.isfinite(pred).all():
        return RegressionMetrics(mae=math.inf, rmse=math.inf, r2=math.nan, n=n)
    # sklearn returns 0.0 or 1.0 (with a warning) for constant y_true; R² is undefined there.
    r2 = float(r2_score(true, pred)) if n >= 2 and np.ptp(true) > 0 else math.nan
    return RegressionMetrics(
        mae=float(mean_absolute_error(true, pred)), rmse=math.sqrt(float(mean_squared_error(true, pred))), r2=r2, n=n
    )
