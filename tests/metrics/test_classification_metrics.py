"""ClassificationMetrics must agree with scikit-learn number for number."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    roc_auc_score,
    top_k_accuracy_score,
)

from tocha.metrics import METRIC_NAMES, default_mode
from tocha.metrics.classification import ClassificationMetrics, ClassRow, classification_metrics


def _random_case(n_classes: int, n: int, seed: int, absent: int | None = None):
    """Random labels and probabilities; ``absent`` is a class that never occurs in y_true."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(n_classes) if c != absent]
    y_true = rng.choice(present, size=n)
    y_prob = rng.dirichlet(np.ones(n_classes), size=n)
    classes = [f"class_{i}" for i in range(n_classes)]
    return y_true, y_prob, classes


def _sklearn_report(y_true, y_prob, classes, output_dict=True, digits=2):
    return classification_report(
        y_true,
        y_prob.argmax(axis=1),
        labels=list(range(len(classes))),
        target_names=classes,
        output_dict=output_dict,
        zero_division=0,
        digits=digits,
    )


@pytest.mark.parametrize(("n_classes", "absent", "seed"), [(3, None, 0), (4, 3, 1), (10, 0, 2)])
def test_matches_sklearn_classification_report(n_classes, absent, seed):
    y_true, y_prob, classes = _random_case(n_classes, 200, seed, absent)
    if n_classes >= 4:
        y_prob[:, 1] = 0.0  # class 1 is never predicted: precision hits zero_division
    if absent is not None:
        y_prob[:, absent] = 0.0  # neither true nor predicted: must still get its own row
    m = classification_metrics(y_true, y_prob, classes)
    ref = _sklearn_report(y_true, y_prob, classes)

    assert m.classes == tuple(classes)
    assert tuple(row.name for row in m.per_class) == tuple(classes)
    assert m.n_samples == 200
    assert m.accuracy == ref["accuracy"]
    for row in m.per_class:
        r = ref[row.name]
        assert (row.precision, row.recall, row.f1, row.support) == (
            r["precision"],
            r["recall"],
            r["f1-score"],
            r["support"],
        )
    for row, key in ((m.macro, "macro avg"), (m.weighted, "weighted avg")):
        r = ref[key]
        assert row.name == key
        assert (row.precision, row.recall, row.f1, row.support) == (
            r["precision"],
            r["recall"],
            r["f1-score"],
            r["support"],
        )
    if absent is not None:
        assert m.per_class[absent].support == 0
    if n_classes >= 4:
        assert m.per_class[1].precision == 0.0


@pytest.mark.parametrize(("n_classes", "absent"), [(3, None), (6, 5), (12, 2)])
def test_confusion_matches_sklearn_and_keeps_absent_classes(n_classes, absent):
    y_true, y_prob, classes = _random_case(n_classes, 150, seed=n_classes, absent=absent)
    m = classification_metrics(y_true, y_prob, classes)
    ref = confusion_matrix(y_true, y_prob.argmax(axis=1), labels=list(range(n_classes)))
    assert np.array_equal(np.array(m.confusion), ref)
    assert len(m.confusion) == n_classes and all(len(r) == n_classes for r in m.confusion)
    if absent is not None:
        assert sum(m.confusion[absent]) == 0
    assert sum(map(sum, m.confusion)) == 150


def test_top_k_matches_sklearn_and_skips_k_not_below_n_classes():
    y_true, y_prob, classes = _random_case(10, 300, seed=3, absent=7)
    m = classification_metrics(y_true, y_prob, classes, top_k=(5, 1, 3, 10, 12))
    assert sorted(m.top_k_accuracy) == [1, 3, 5]
    for k, value in m.top_k_accuracy.items():
        assert value == top_k_accuracy_score(y_true, y_prob, k=k, labels=list(range(10)))
    assert m.top_k_accuracy[1] == m.accuracy
    assert m.top_k_accuracy[1] < m.top_k_accuracy[3] < m.top_k_accuracy[5]

    small = classification_metrics(*_random_case(5, 40, seed=4))
    assert small.top_k_accuracy == {}  # default k=5 is not below 5 classes
    assert "x.top5_accuracy" not in small.flat("x")


def test_binary_aucs_match_sklearn():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, size=300)
    positive = np.clip(0.3 * y_true + rng.random(300) * 0.7, 0, 1)
    y_prob = np.stack([1 - positive, positive], axis=1)
    m = classification_metrics(y_true, y_prob, ["neg", "pos"])
    assert m.roc_auc == pytest.approx(roc_auc_score(y_true, positive), abs=1e-12)
    assert m.pr_auc == pytest.approx(average_precision_score(y_true, positive), abs=1e-12)
    assert 0.5 < m.roc_auc < 1.0
    flat = m.flat("test")
    assert flat["test.roc_auc"] == m.roc_auc and flat["test.pr_auc"] == m.pr_auc


def test_logits_give_same_predictions_and_softmax_aucs():
    rng = np.random.default_rng(6)
    y_true = rng.integers(0, 2, size=200)
    logits = rng.normal(size=(200, 2)) * 3 + y_true[:, None] * np.array([0.0, 1.0])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    from_logits = classification_metrics(y_true, logits, ["a", "b"])
    from_probs = classification_metrics(y_true, probs, ["a", "b"])
    assert from_logits.accuracy == from_probs.accuracy
    assert from_logits.confusion == from_probs.confusion
    assert from_logits.roc_auc == pytest.approx(roc_auc_score(y_true, probs[:, 1]), abs=1e-12)
    assert from_logits.pr_auc == pytest.approx(average_precision_score(y_true, probs[:, 1]))


def test_aucs_none_for_single_class_and_for_multiclass():
    y_prob = np.random.default_rng(7).dirichlet([1, 1], size=20)
    single = classification_metrics(np.ones(20, dtype=int), y_prob, ["a", "b"])
    assert single.roc_auc is None and single.pr_auc is None
    assert "v.roc_auc" not in single.flat("v") and "v.pr_auc" not in single.flat("v")

    multi = classification_metrics(*_random_case(3, 30, seed=8))
    assert multi.roc_auc is None and multi.pr_auc is None


def test_torch_tensors_give_same_result_as_numpy():
    torch = pytest.importorskip("torch")
    y_true, y_prob, classes = _random_case(6, 100, seed=9, absent=2)
    ref = classification_metrics(y_true, y_prob, classes, top_k=(3,))
    got = classification_metrics(torch.from_numpy(y_true), torch.from_numpy(y_prob), classes, top_k=(3,))
    assert got == ref
    # Low-precision logits straight from an autocast forward pass must also work.
    half = classification_metrics(torch.from_numpy(y_true), torch.from_numpy(y_prob).bfloat16(), classes)
    assert half.n_samples == 100 and 0.0 <= half.accuracy <= 1.0


def test_flat_keys_and_metric_names():
    m = classification_metrics(*_random_case(8, 64, seed=10))
    assert set(m.flat("val")) == {
        "val.accuracy",
        "val.top5_accuracy",
        "val.precision_macro",
        "val.recall_macro",
        "val.f1_macro",
        "val.precision_weighted",
        "val.recall_weighted",
        "val.f1_weighted",
    }
    assert m.flat("val")["val.f1_macro"] == m.macro.f1
    assert m.flat("val")["val.recall_weighted"] == m.weighted.recall
    binary = classification_metrics(np.array([0, 1, 1, 0]), np.eye(2)[[0, 1, 0, 0]], ["a", "b"])
    every_suffix = {k.split(".", 1)[1] for k in (*m.flat("v"), *binary.flat("v"))}
    # loss comes from the engine; bpc and perplexity from the text metrics (tocha.metrics.text);
    # mae, rmse and r2 from the regression metrics (tests/metrics/test_regression_metrics.py)
    assert every_suffix | {"loss", "bpc", "perplexity", "mae", "rmse", "r2"} == set(METRIC_NAMES)


def test_default_mode():
    assert default_mode("loss") == "min"
    assert default_mode("val.loss") == "min"
    assert default_mode("accuracy") == "max"
    assert default_mode("val.f1_macro") == "max"


def test_to_dict_json_round_trip():
    m = classification_metrics(*_random_case(7, 90, seed=11, absent=4), top_k=(2, 5))
    d = m.to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    assert ClassificationMetrics.from_dict(again) == m
    assert d["top_k_accuracy"] == {"2": m.top_k_accuracy[2], "5": m.top_k_accuracy[5]}
    assert d["per_class"][0] == {
        "name": "class_0",
        "precision": m.per_class[0].precision,
        "recall": m.per_class[0].recall,
        "f1": m.per_class[0].f1,
        "support": m.per_class[0].support,
    }
    assert d["confusion"] == [list(r) for r in m.confusion]
    binary = classification_metrics(np.array([0, 1, 1, 0]), np.eye(2)[[0, 1, 0, 0]], ["a", "b"])
    assert ClassificationMetrics.from_dict(json.loads(json.dumps(binary.to_dict()))) == binary


@pytest.mark.parametrize("digits", [2, 4])
def test_report_text_matches_sklearn_layout(digits):
    y_true, y_prob, classes = _random_case(4, 80, seed=12)
    classes[2] = "a much longer class name"
    m = classification_metrics(y_true, y_prob, classes, top_k=(2,))
    text = m.report_text(digits=digits)
    ref = _sklearn_report(y_true, y_prob, classes, output_dict=False, digits=digits)
    assert text.startswith(ref)
    assert f"top-2 accuracy  {m.top_k_accuracy[2]:>9.{digits}f}" in text[len(ref) :]


def test_nan_scores_do_not_crash_and_withhold_aucs():
    y_prob = np.full((10, 2), np.nan)
    m = classification_metrics(np.array([0, 1] * 5), y_prob, ["a", "b"])
    assert m.roc_auc is None and m.pr_auc is None
    assert m.n_samples == 10 and sum(map(sum, m.confusion)) == 10


@pytest.mark.parametrize(
    ("y_true", "y_prob", "match"),
    [
        (np.array([0, 1]), np.ones((2, 3)) / 3, r"shape \[N, 2\]"),
        (np.array([0, 1, 1]), np.ones((2, 2)) / 2, "3 samples"),
        (np.array([0, 2]), np.ones((2, 2)) / 2, "allowed: 0..1"),
        (np.array([0.0, 1.0]), np.ones((2, 2)) / 2, "integer"),
        (np.zeros(0, dtype=int), np.zeros((0, 2)), "0 samples"),
    ],
)
def test_bad_inputs_name_the_problem(y_true, y_prob, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_prob, ["a", "b"])


def test_class_row_is_frozen():
    row = ClassRow("a", 1.0, 1.0, 1.0, 3)
    with pytest.raises(AttributeError):
        row.f1 = 0.0  # type: ignore[misc]


def test_package_import_is_cheap():
    code = (
        "import sys, tocha.metrics, tocha.reports\n"
        "heavy = [m for m in ('numpy', 'sklearn', 'matplotlib', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
