"""regression_metrics against numbers worked out by hand, and its edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tocha.metrics import METRIC_NAMES, RegressionMetrics, default_mode, regression_metrics


def test_hand_computed_values():
    # errors (pred - true): 1, -1, 2, 0 -> MAE 4/4 = 1, MSE 6/4 = 1.5
    # y_true mean 2.5 -> total sum of squares 2.25 + 0.25 + 0.25 + 2.25 = 5 -> R² = 1 - 6/5 = -0.2
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 5.0, 4.0])
    assert m.mae == pytest.approx(1.0)
    assert m.rmse == pytest.approx(math.sqrt(1.5))
    assert m.r2 == pytest.approx(-0.2)
    assert m.n == 4


def test_perfect_and_mean_predictions():
    y = np.array([3.0, -1.0, 4.0, 1.5])
    perfect = regression_metrics(y, y)
    assert (perfect.mae, perfect.rmse, perfect.r2) == (0.0, 0.0, 1.0)
    # Predicting the mean everywhere: R² exactly 0, RMSE = population std.
    mean = regression_metrics(y, np.full(4, y.mean()))
    assert mean.r2 == pytest.approx(0.0, abs=1e-12)
    assert mean.rmse == pytest.approx(y.std())


def test_torch_tensors_and_column_vectors():
    t = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float16)
    p = torch.tensor([1.5, 2.0, 2.5], requires_grad=True)
    m = regression_metrics(t, p)
    assert m.mae == pytest.approx(1 / 3) and m.rmse == pytest.approx(math.sqrt(0.5 / 3)) and m.n == 3


def test_flat_and_dict_round_trip():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 5.0, 4.0])
    assert m.flat("val") == {"val.mae": m.mae, "val.rmse": m.rmse, "val.r2": m.r2}
    assert {k.split(".", 1)[1] for k in m.flat("val")} <= set(METRIC_NAMES)
    assert RegressionMetrics.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert default_mode("val.rmse") == "min" and default_mode("val.mae") == "min"
    assert default_mode("val.r2") == "max"


def test_diverged_and_constant_cases():
    bad = regression_metrics([1.0, 2.0], [float("nan"), 1.0])
    assert bad.rmse == math.inf and bad.mae == math.inf and math.isnan(bad.r2)
    const = regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(const.r2) and const.mae == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([1.0, 2.0], [1.0], "2 values but y_pred has 1"),
        ([], [], "0 samples"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "shape"),
    ],
)
def test_bad_shapes(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        regression_metrics(y_true, y_pred)
