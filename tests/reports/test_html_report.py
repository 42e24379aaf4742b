"""The HTML report is self-contained, escaped, and survives missing pieces."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from tocha.metrics.classification import classification_metrics
from tocha.reports.html import write_report


class _Collector(HTMLParser):
    """Collects tags, image sources and visible text so tests check structure, not substrings."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img_src: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            a = dict(attrs)  # an embedded image names the PNG it came from (it stays beside the page)
            assert a["src"].startswith("data:image/png;base64,")
            self.img_src.append(a["data-file"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _metrics(classes, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(classes), size=120)
    y_prob = rng.dirichlet(np.ones(len(classes)), size=120)
    y_prob[np.arange(60), y_true[:60]] += 1.0  # better than chance, so numbers differ per class
    return classification_metrics(y_true, y_prob / y_prob.sum(1, keepdims=True), classes, top_k=(2,))


HISTORY = [
    {
        "kind": "train",
        "step": 10,
        "epoch": 0.5,
        "train.loss": 1.5,
        "train.accuracy": 0.4,
        "lr": 0.1,
        "samples_per_second": 900.0,
    },
    {
        "kind": "eval",
        "step": 20,
        "epoch": 1.0,
        "train.loss": 1.2,
        "train.accuracy": 0.5,
        "val.loss": 1.3,
        "val.accuracy": 0.45,
    },
]


def test_full_report(tmp_path):
    classes = ["<b>", "sneaker", "bag & co"]
    test_m = _metrics(classes, seed=1)
    val_m = _metrics(classes, seed=2)
    summary = {
        "best": {"metric": "val.accuracy", "value": 0.8125, "epoch": 3},
        "test": test_m.flat("test"),
        "val": val_m.flat("val"),
        "wall_seconds": 12.5,
        "train_samples_per_second": 4321.0,
        "peak_memory_mb": 256.0,
        "device": "cpu",
        "epochs": 3,
    }
    out = write_report(
        tmp_path / "run",
        title="run <1>",
        summary=summary,
        config_text="model:\n  name: <mlp>\n",
        test_metrics=test_m,
        val_metrics=val_m,
        history=HISTORY,
        extra_sections=[("Benchmark", "<table><tr><td>latency_ms_p50</td></tr></table>")],
    )
    assert out == tmp_path / "run" / "report.html"
    html = out.read_text(encoding="utf-8")
    parsed = _parse(out)

    # Escaping: the raw class name never appears as a tag; its escaped form does.
    assert "b" not in parsed.tags
    assert "&lt;b&gt;" in html and "bag &amp; co" in html
    assert "<title>run &lt;1&gt;</title>" in html
    assert "name: &lt;mlp&gt;" in html
    text = "".join(parsed.text)
    for name in classes:
        assert name in text  # visible once the browser unescapes it

    assert f"{test_m.accuracy:.4f}" in text
    assert f"{val_m.accuracy:.4f}" in text
    assert f"{test_m.top_k_accuracy[2]:.4f}" in text
    assert f"{test_m.per_class[1].f1:.4f}" in text and f"{test_m.macro.precision:.4f}" in text
    assert "0.8125" in text and "val.accuracy" in text
    assert "test.f1_macro" in text and "test.test." not in text  # flat keys are not re-prefixed
    assert "4,321.0 samples/s" in text  # thousands separators

    # Images are local files that exist; nothing points outside the run folder.
    assert sorted(parsed.img_src) == ["confusion_matrix.png", "curves.png"]
    for src in parsed.img_src:
        assert (out.parent / src).read_bytes()[:4] == b"\x89PNG"
    local = re.sub(r'src="data:image/png;base64,[^"]*"', "", html.replace("<!DOCTYPE html>", ""))
    assert not re.search(r"(https?:)?//", local)
    assert "script" not in parsed.tags

    # A task's own sections come verbatim, right after the summary (before the generic ones).
    assert "<table><tr><td>latency_ms_p50</td></tr></table>" in html
    assert html.index("Summary") < html.index("Benchmark") < html.index("Training curves")


def test_confusion_falls_back_to_val(tmp_path):
    val_m = _metrics(["a", "b"], seed=3)
    out = write_report(
        tmp_path, title="t", summary={}, config_text="", test_metrics=None, val_metrics=val_m, history=HISTORY
    )
    parsed = _parse(out)
    assert "confusion_matrix.png" in parsed.img_src
    text = "".join(parsed.text)
    assert "validation set" in text
    assert f"{val_m.accuracy:.4f}" in text


def test_missing_pieces_say_not_available(tmp_path):
    out = write_report(
        tmp_path, title="empty", summary={}, config_text="", test_metrics=None, val_metrics=None, history=[]
    )
    parsed = _parse(out)
    assert parsed.img_src == []
    assert not (tmp_path / "curves.png").exists()
    assert not (tmp_path / "confusion_matrix.png").exists()
    text = "".join(parsed.text)
    # summary, curves, all values, config; no classification sections without classification metrics
    assert text.count("not available") == 4
    assert "Confusion matrix" not in text and "classification report" not in text


def test_test_metrics_none_with_history(tmp_path):
    summary = {"val": {"accuracy": 0.5}, "best": {"metric": "val.loss", "value": 0.9}}
    out = write_report(
        tmp_path, title="t", summary=summary, config_text="a: 1", test_metrics=None, val_metrics=None, history=HISTORY
    )
    parsed = _parse(out)
    assert parsed.img_src == ["curves.png"]
    assert (tmp_path / "curves.png").stat().st_size > 5_000
    text = "".join(parsed.text)
    assert "val accuracy" in text and "0.5000" in text
    assert "best val.loss" in text and "0.9000" in text
