"""PNG plots for the run report: training curves, the confusion matrix and regression fits.

Uses matplotlib's object-oriented ``Figure`` API, which needs no GUI backend and keeps no global
pyplot state, so plotting works headless and in threads and leaks no open figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["plot_confusion", "plot_curves", "plot_regression", "plot_tradeoff"]

_DPI = 100  # small PNGs; the report shows them at roughly this size anyway
_MAX_ANNOTATED_CLASSES = 20  # beyond this, per-cell numbers are unreadable


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(x, y) for records that carry a finite number under ``key``; x is epoch, else step."""
    xs: list[float] = []
    ys: list[float] = []
    for rec in records:
        y = rec.get(key)
        x = rec.get("epoch", rec.get("step"))
        if not isinstance(y, (int, float)) or not isinstance(x, (int, float)):
            continue
        if not (math.isfinite(y) and math.isfinite(x)):
            continue  # a NaN loss from a diverged step would blank the whole line
        xs.append(float(x))
        ys.append(float(y))
    return xs, ys


def _x_label(records: list[dict[str, Any]]) -> str:
    return "epoch" if any("epoch" in r for r in records) else "step"


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy versus epoch, train and val, from metrics.jsonl records."""
    path = Path(path)
    train_recs = [r for r in history if r.get("kind") == "train"]
    eval_recs = [r for r in history if r.get("kind") == "eval"]

    fig = Figure(figsize=(14, 4), dpi=_DPI, layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    # The learning rate at each log read and evaluation: the schedule as it ran.
    x, y = _series(sorted(train_recs + eval_recs, key=lambda r: r.get("step", 0)), "lr")
    if x:
        ax_lr.plot(x, y, color="tab:green", linewidth=1.5, marker="o" if len(x) == 1 else None)
    else:
        ax_lr.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax_lr.transAxes, color="gray")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel(_x_label(eval_recs or train_recs))
    ax_lr.grid(True, alpha=0.3)
    panels = (
        (ax_loss, "loss", "train.loss", "val.loss"),
        (ax_acc, "accuracy", "train.accuracy", "val.accuracy"),
    )
    for ax, title, train_key, val_key in panels:
        drawn = False
        # Per-log-interval points are noisy, so they sit behind the epoch-level lines.
        x, y = _series(train_recs, train_key)
        if x:
            ax.plot(
                x,
                y,
                color="tab:blue",
                alpha=0.35,
                linewidth=0.8,
                marker="o" if len(x) == 1 else None,
                label="train (per interval)",
            )
            drawn = True
        for key, color, label in ((train_key, "tab:blue", "train"), (val_key, "tab:orange", "val")):
            x, y = _series(eval_recs, key)
            if x:
                # Markers keep a single evaluation point visible; a line needs two.
                ax.plot(x, y, color=color, linewidth=1.8, marker="o", markersize=4, label=label)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel(_x_label(eval_recs or train_recs))
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, color="gray")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path,
    normalize: bool = True,
) -> Path:
    """Heatmap of a confusion matrix (rows = true, cols = predicted), counts written in cells.

    With ``normalize`` the colours show each true class's row as fractions, so rare classes are as
    visible as common ones; the annotations stay raw counts either way.
    """
    import numpy as np

    path = Path(path)
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {list(counts.shape)} but there are {n} classes; expected [{n}, {n}]"
        )
    if n == 0:
        raise ValueError("cannot plot a confusion matrix with 0 classes")
    if normalize:
        row_sums = counts.sum(axis=1, keepdims=True)
        # A class absent from the data has an all-zero row; leave it at 0 instead of NaN.
        colours = counts / np.maximum(row_sums, 1)
        vmax = 1.0
    else:
        colours = counts.astype(np.float64)
        vmax = max(float(colours.max()), 1.0)

    side = min(4.0 + 0.35 * n, 14.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(colours, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")

    tick_size = 8 if n <= 30 else 5
    ax.set_xticks(
        range(n), labels=[str(c) for c in classes], rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size
    )
    ax.set_yticks(range(n), labels=[str(c) for c in classes], fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))

    if n <= _MAX_ANNOTATED_CLASSES:
        font_size = 9 if n <= 10 else 6
        for i in range(n):
            for j in range(n):
                dark = colours[i, j] > 0.6 * vmax
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=font_size,
                    color="white" if dark else "black",
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def plot_regression(y_true: Any, y_pred: Any, path: str | Path) -> Path:
    """Two panels: predicted vs true with the y = x line, and residual (pred - true) vs predicted.

    Pass values in the target's own units (unscaled). Non-finite predictions are left out and
    counted in the title, so one diverged value does not blank the axes.
    """
    import numpy as np

    path = Path(path)
    true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
    finite = np.isfinite(true) & np.isfinite(pred)
    dropped = int((~finite).sum())
    true, pred = true[finite], pred[finite]
    residual = pred - true

    fig = Figure(figsize=(10, 4.5), dpi=_DPI, layout="constrained")
    ax_fit, ax_res = fig.subplots(1, 2)
    # Many points overlap; transparency shows where they pile up.
    alpha = 0.7 if len(true) <= 500 else 0.25
    if len(true):
        ax_fit.scatter(true, pred, s=12, alpha=alpha, color="tab:blue", edgecolors="none")
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        pad = 0.03 * (high - low) if high > low else 1.0
        ax_fit.plot(
            [low - pad, high + pad], [low - pad, high + pad], color="tab:red", linewidth=1.2, label="y = x (perfect)"
        )
        ax_fit.set_xlim(low - pad, high + pad)
        ax_fit.set_ylim(low - pad, high + pad)
        ax_fit.set_aspect("equal", adjustable="box")
        ax_fit.legend(fontsize="small", loc="upper left")
        ax_res.scatter(pred, residual, s=12, alpha=alpha, color="tab:blue", edgecolors="none")
        ax_res.axhline(0.0, color="tab:red", linewidth=1.2)
    else:
        for ax in (ax_fit, ax_res):
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, color="gray")
    suffix = f" ({dropped} non-finite left out)" if dropped else ""
    ax_fit.set_title(f"predicted vs true, n={len(true)}{suffix}")
    ax_fit.set_xlabel("true")
    ax_fit.set_ylabel("predicted")
    ax_res.set_title("residuals")
    ax_res.set_xlabel("predicted")
    ax_res.set_ylabel("residual (predicted - true)")
    for ax in (ax_fit, ax_res):
        ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def plot_tradeoff(rows: list[dict[str, Any]], path: str | Path, *, batch: int, max_drop: float) -> Path:
    """The compression search: p50 latency vs validation accuracy of every measured candidate.

    The Pareto front (nothing is both faster and more accurate) is joined by a line, the chosen
    artifact is a star, and the dashed line is the accuracy budget (fp32's val accuracy - max_drop).
    """
    path = Path(path)
    fig = Figure(figsize=(8, 5), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    measured = [r for r in rows if r.get("path") and r.get("val_accuracy") is not None]
    for r in measured:
        color = "tab:green" if r["kept"] else ("tab:gray" if r["name"] != "fp32" else "tab:blue")
        ax.scatter(r["p50_ms"], r["val_accuracy"], s=36, color=color, zorder=3)
        ax.annotate(r["name"], (r["p50_ms"], r["val_accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((r for r in measured if r.get("pareto")), key=lambda r: r["p50_ms"])
    if front:
        ax.plot(
            [r["p50_ms"] for r in front], [r["val_accuracy"] for r in front], color="tab:orange", label="Pareto front"
        )
    chosen = [r for r in measured if r.get("chosen")]
    if chosen:
        ax.scatter(
            chosen[0]["p50_ms"],
            chosen[0]["val_accuracy"],
            marker="*",
            s=220,
            color="tab:red",
            zorder=4,
            label=f"chosen: {chosen[0]['name']}",
        )
    reference = next((r for r in measured if r["name"] == "fp32"), None)
    if reference is not None:
        ax.axhline(
            reference["val_accuracy"] - max_drop / 100,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"accuracy budget (fp32 - {max_drop:g} points)",
        )
    if not measured:
        ax.text(0.5, 0.5, "no candidate was measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, ONNX Runtime on this machine)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("compression candidates: kept (green), rejected (gray)")
    ax.grid(True, alpha=0.3)
    if front or chosen or reference is not None:
        ax.legend(fontsize="small", loc="lower right")
    fig.savefig(path)
    return path
