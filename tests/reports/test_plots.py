"""The plots write real, non-trivial PNG files for full, sparse and empty inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tocha.reports.plots import plot_confusion, plot_curves, plot_regression

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_bytes: int = 5_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, f"{path.name} is suspiciously small ({len(data)} bytes)"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        # Something was drawn: a blank canvas would have a single colour.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or [0, 0]) > 10
        return img.size


def _history(epochs: int = 3, logs_per_epoch: int = 4) -> list[dict]:
    history: list[dict] = []
    step = 0
    for epoch in range(epochs):
        for i in range(logs_per_epoch):
            step += 10
            e = epoch + (i + 1) / logs_per_epoch
            history.append(
                {
                    "kind": "train",
                    "step": step,
                    "epoch": e,
                    "train.loss": 2.0 / (1 + e),
                    "train.accuracy": 0.5 + 0.1 * e,
                    "lr": 0.1,
                    "samples_per_second": 1000.0,
                }
            )
        history.append(
            {
                "kind": "eval",
                "step": step,
                "epoch": float(epoch + 1),
                "train.loss": 2.0 / (2 + epoch),
                "train.accuracy": 0.6 + 0.1 * epoch,
                "val.loss": 2.2 / (2 + epoch),
                "val.accuracy": 0.55 + 0.1 * epoch,
                "val.f1_macro": 0.5,
            }
        )
    return history


def test_plot_curves_writes_png(tmp_path):
    out = plot_curves(_history(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    width, height = _assert_png(out)
    assert width > height  # two panels side by side
    assert width <= 1500 and height <= 600  # modest size, dpi ~100 (loss, accuracy, learning rate)


def test_plot_curves_single_eval_point(tmp_path):
    history = [
        {
            "kind": "eval",
            "step": 5,
            "epoch": 1.0,
            "train.loss": 1.0,
            "val.loss": 1.2,
            "train.accuracy": 0.6,
            "val.accuracy": 0.5,
        }
    ]
    _assert_png(plot_curves(history, tmp_path / "one.png"))


def test_plot_curves_missing_keys_nan_and_empty(tmp_path):
    history = [
        {"kind": "train", "step": 1, "train.loss": 3.0},  # no epoch: falls back to step
        {"kind": "train", "step": 2, "train.loss": float("nan")},
        {"kind": "eval", "step": 2, "epoch": 1.0, "val.loss": 2.5},  # no accuracies at all
        {"kind": "something else"},
    ]
    _assert_png(plot_curves(history, tmp_path / "partial.png"))
    _assert_png(plot_curves([], tmp_path / "sub" / "empty.png"), min_bytes=2_000)


@pytest.mark.parametrize("n_classes", [2, 10, 30])
def test_plot_confusion_writes_png(tmp_path, n_classes):
    rng = np.random.default_rng(n_classes)
    confusion = rng.integers(0, 50, size=(n_classes, n_classes))
    confusion[0] = 0  # a class absent from the data must not produce NaN colours
    classes = [f"class number {i}" for i in range(n_classes)]
    out = plot_confusion(confusion.tolist(), classes, tmp_path / "cm.png")
    width, height = _assert_png(out)
    assert width <= 1600 and height <= 1500


def test_plot_confusion_unnormalised(tmp_path):
    _assert_png(plot_confusion([[5, 1], [0, 7]], ["cat", "dog"], tmp_path / "cm.png", normalize=False))


def test_plot_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match=r"expected \[3, 3\]"):
        plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")


def test_plot_regression_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.normal(150, 70, 90)
    y_pred = y_true + rng.normal(0, 30, 90)
    path = plot_regression(y_true, y_pred, tmp_path / "sub" / "regression.png")
    assert path == tmp_path / "sub" / "regression.png"
    width, height = _assert_png(path)
    assert width > height  # two panels side by side


def test_plot_regression_non_finite_empty_and_mismatch(tmp_path):
    _assert_png(plot_regression([1.0, 2.0, 3.0], [1.5, float("nan"), 2.5], tmp_path / "nan.png"))
    _assert_png(plot_regression([2.0], [2.0], tmp_path / "one.png"))
    _assert_png(plot_regression([], [], tmp_path / "empty.png"), min_bytes=1_000)
    with pytest.raises(ValueError, match="3 values but y_pred has 2"):
        plot_regression([1.0, 2.0, 3.0], [1.0, 2.0], tmp_path / "bad.png")
