"""Classification metrics as one frozen value, computed with scikit-learn.

Every number comes from scikit-learn with ``labels=range(K)`` and ``zero_division=0`` so that it
matches ``classification_report(output_dict=True, zero_division=0)`` exactly, and classes absent
from a (small) evaluation set still get a row and a confusion-matrix column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from tocha.metrics.names import METRIC_NAMES, default_mode

__all__ = [
    "METRIC_NAMES",
    "ClassRow",
    "ClassificationMetrics",
    "classification_metrics",
    "default_mode",
]

_AVG_HEADING_WIDTH = len("weighted avg")  # sklearn sizes the name column to fit this heading


@dataclass(frozen=True)
class ClassRow:
    """One line of a classification report: a class, or an average over classes."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassRow:
        return cls(
            name=str(data["name"]),
            precision=float(data["precision"]),
            recall=float(data["recall"]),
            f1=float(data["f1"]),
            support=int(data["support"]),
        )


@dataclass(frozen=True)
class ClassificationMetrics:
    """Everything the CLI prints and the report renders about one evaluation split."""

    classes: tuple[str, ...]
    accuracy: float
    top_k_accuracy: dict[int, float]  # only for k < number of classes (otherwise trivially 1.0)
    per_class: tuple[ClassRow, ...]
    macro: ClassRow
    weighted: ClassRow
    confusion: tuple[tuple[int, ...], ...]  # rows = true class, cols = predicted (sklearn)
    roc_auc: float | None  # two-class data only, positive class = index 1
    pr_auc: float | None  # average precision, two-class data only
    n_samples: int

    def flat(self, prefix: str) -> dict[str, float]:
        """Scalar metrics keyed '{prefix}.{name}', for logging, monitoring and the summary."""
        out = {f"{prefix}.accuracy": self.accuracy}
        for k, value in sorted(self.top_k_accuracy.items()):
            out[f"{prefix}.top{k}_accuracy"] = value
        for avg_name, row in (("macro", self.macro), ("weighted", self.weighted)):
            out[f"{prefix}.precision_{avg_name}"] = row.precision
            out[f"{prefix}.recall_{avg_name}"] = row.recall
            out[f"{prefix}.f1_{avg_name}"] = row.f1
        if self.roc_auc is not None:
            out[f"{prefix}.roc_auc"] = self.roc_auc
        if self.pr_auc is not None:
            out[f"{prefix}.pr_auc"] = self.pr_auc
        return out

    def headline(self, loss: float) -> str:
        extra = "".join(f"  top-{k} accuracy {v:.4f}" for k, v in self.top_k_accuracy.items())
        return f"accuracy {self.accuracy:.4f}  loss {loss:.4f}{extra}"

    def report_text(self, digits: int = 4) -> str:
        """A text table laid out exactly like sklearn's ``classification_report``.

        Top-k accuracies and AUCs, which sklearn's report lacks, follow as extra lines.
        """
        headers = ("precision", "recall", "f1-score", "support")
        width = max(max((len(c) for c in self.classes), default=0), _AVG_HEADING_WIDTH, digits)
        head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
        row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
        acc_fmt = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"

        text = head_fmt.format("", *headers, width=width) + "\n\n"
        for row in self.per_class:
            text += row_fmt.format(row.name, row.precision, row.recall, row.f1, row.support, width=width, digits=digits)
        text += "\n"
        text += acc_fmt.format("accuracy", "", "", self.accuracy, self.n_samples, width=width, digits=digits)
        for row in (self.macro, self.weighted):
            text += row_fmt.format(row.name, row.precision, row.recall, row.f1, row.support, width=width, digits=digits)

        extra = [(f"top-{k} accuracy", v) for k, v in sorted(self.top_k_accuracy.items())]
        extra += [(name, v) for name, v in (("roc auc", self.roc_auc), ("pr auc", self.pr_auc)) if v is not None]
        if extra:
            text += "\n"
            name_width = max(width, *(len(name) for name, _ in extra))
            for name, value in extra:
                text += f"{name:>{name_width}s}  {value:>9.{digits}f}\n"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; top-k keys become strings because JSON keys must be."""
        return {
            "classes": list(self.classes),
            "accuracy": self.accuracy,
            "top_k_accuracy": {str(k): v for k, v in sorted(self.top_k_accuracy.items())},
            "per_class": [row.to_dict() for row in self.per_class],
            "macro": self.macro.to_dict(),
            "weighted": self.weighted.to_dict(),
            "confusion": [list(row) for row in self.confusion],
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "n_samples": self.n_samples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationMetrics:
        """Inverse of :meth:`to_dict` (also after a JSON round trip)."""
        return cls(
            classes=tuple(str(c) for c in data["classes"]),
            accuracy=float(data["accuracy"]),
            top_k_accuracy={int(k): float(v) for k, v in data["top_k_accuracy"].items()},
            per_class=tuple(ClassRow.from_dict(r) for r in data["per_class"]),
            macro=ClassRow.from_dict(data["macro"]),
            weighted=ClassRow.from_dict(data["weighted"]),
            confusion=tuple(tuple(int(x) for x in row) for row in data["confusion"]),
            roc_auc=None if data["roc_auc"] is None else float(data["roc_auc"]),
            pr_auc=None if data["pr_auc"] is None else float(data["pr_auc"]),
            n_samples=int(data["n_samples"]),
        )


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or torch tensor, without importing torch here."""
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach()
        # numpy has no bfloat16, and half precision would skew the softmax for AUCs.
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x)


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that already look like probabilities pass through; logits get a softmax."""
    rows_sum_to_one = np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
    if rows_sum_to_one and scores.min() >= 0.0 and scores.max() <= 1.0:
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)  # avoids overflow in exp
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _validate(y_true: np.ndarray, y_prob: np.ndarray, classes: tuple[str, ...], top_k: tuple[int, ...]) -> None:
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}: {list(classes)}")
    if y_true.ndim != 1:
        raise ValueError(f"y_true must have shape [N], got {list(y_true.shape)}")
    if y_prob.ndim != 2 or y_prob.shape[1] != n_classes:
        raise ValueError(f"y_prob must have shape [N, {n_classes}] (one column per class), got {list(y_prob.shape)}")
    if y_true.shape[0] != y_prob.shape[0]:
        raise ValueError(f"y_true has {y_true.shape[0]} samples but y_prob has {y_prob.shape[0]}")
    if y_true.shape[0] == 0:
        raise ValueError("cannot compute metrics on 0 samples")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(
            f"y_true holds labels in [{y_true.min()}, {y_true.max()}]; "
            f"allowed: 0..{n_classes - 1} for {n_classes} classes"
        )
    bad_k = [k for k in top_k if int(k) < 1]
    if bad_k:
        raise ValueError(f"top_k values must be >= 1, got {bad_k}")


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    classes: Sequence[str],
    top_k: Iterable[int] = (5,),
) -> ClassificationMetrics:
    """Metrics for true labels ``y_true`` [N] and class scores ``y_prob`` [N, K].

    ``y_prob`` may be probabilities or logits: predictions use argmax either way, and the AUCs
    apply a softmax when rows are not already probabilities. Accepts numpy arrays or torch tensors.
    """
    classes_t = tuple(str(c) for c in classes)
    top_k_t = tuple(int(k) for k in top_k)
    y_true_np = _to_numpy(y_true)
    raw_scores = _to_numpy(y_prob).astype(np.float64)
    _validate(y_true_np, raw_scores, classes_t, top_k_t)
    y_true_np = y_true_np.astype(np.int64)
    n_classes = len(classes_t)
    labels = list(range(n_classes))

    # A diverged model yields NaN/inf scores. Its metrics are meaningless but an evaluation must
    # not crash the run, so rank with finite stand-ins and withhold the AUCs instead.
    all_finite = bool(np.isfinite(raw_scores).all())
    big = np.finfo(np.float64).max
    scores = raw_scores if all_finite else np.nan_to_num(raw_scores, nan=-big, posinf=big, neginf=-big)
    y_pred = scores.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true_np, y_pred, labels=labels, average=None, zero_division=0
    )
    per_class = tuple(
        ClassRow(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(classes_t, precision, recall, f1, support)
    )
    n_samples = int(y_true_np.shape[0])
    averages = []
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true_np, y_pred, labels=labels, average=average, zero_division=0)
        averages.append(ClassRow(f"{average} avg", float(p), float(r), float(f), n_samples))

    top_k_accuracy = {
        k: float(top_k_accuracy_score(y_true_np, scores, k=k, labels=labels))
        for k in sorted(set(top_k_t))
        if k < n_classes
    }

    roc_auc: float | None = None
    pr_auc: float | None = None
    # AUCs need both classes present in y_true; with one class they are undefined, not an error.
    if n_classes == 2 and all_finite and len(np.unique(y_true_np)) == 2:
        positive_prob = _as_probabilities(scores)[:, 1]
        roc_auc = float(roc_auc_score(y_true_np, positive_prob))
        pr_auc = float(average_precision_score(y_true_np, positive_prob))

    confusion = confusion_matrix(y_true_np, y_pred, labels=labels)
    return ClassificationMetrics(
        classes=classes_t,
        accuracy=float(accuracy_score(y_true_np, y_pred)),
        top_k_accuracy=top_k_accuracy,
        per_class=per_class,
        macro=averages[0],
        weighted=averages[1],
        confusion=tuple(tuple(int(x) for x in row) for row in confusion),
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        n_samples=n_samples,
    )
