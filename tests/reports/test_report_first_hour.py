"""report.html of a classify run and of a language-model run: self-contained, no empty sections,
a learning-rate curve, only the config keys that apply, dated sections from later commands.
Parsed as HTML here; test_report_rendering.py renders such reports in headless Chromium."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import torch

import tocha
from tocha.reports.html import upsert_section

QUIET = {"threads": 1, "log": {"tensorboard": False, "progress": False}}


class Sections(HTMLParser):
    """(heading, text and tags below it) per <h2>."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[list] = []
        self.in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self.in_h2 = True
            self.sections.append(["", "", 0])
        elif self.sections and tag in ("img", "table", "pre"):
            self.sections[-1][2] += 1

    def handle_endtag(self, tag):
        if tag == "h2":
            self.in_h2 = False

    def handle_data(self, data):
        if self.sections:
            self.sections[-1][0 if self.in_h2 else 1] += data


def _check_report(path):
    html = path.read_text()
    parser = Sections()
    parser.feed(html)
    assert parser.sections
    for heading, text, tags in parser.sections:
        assert tags or text.strip(), f"section {heading!r} is empty"
        assert "not available" not in text, f"section {heading!r} says not available"
    assert not re.search(r'<img src="(?!data:)', html)  # every image embedded: one file to mail
    assert (path.parent / "curves.png").is_file()  # ... and the PNGs still beside it
    return html


def _config_block(html: str) -> str:
    return html.split("<h2>Resolved configuration</h2>")[1]


def test_classify_report_is_self_contained_with_an_lr_curve_and_applicable_config(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] > 0).long()
    out = tmp_path / "cls"
    tocha.fit("mlp", (x, y), (x[:50], y[:50]), epochs=2, batch_size=20, log_every=2, out=str(out), **QUIET)
    html = _check_report(out / "report.html")
    config = _config_block(html)
    assert "optimizer: adamw" in config
    for absent in ("momentum", "seq_len", "sample_chars", "step_gamma", "tie_weights", "dist:"):
        assert absent not in config, absent
    assert "momentum" in (out / "config.yaml").read_text()  # config.yaml keeps every key
    for _ in range(2):  # each later command adds its own dated section
        assert upsert_section(out, "bench", "Benchmark", "<p>1,234 samples/s</p>")
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<section id="bench-\d{8}-', page)) == 2
    assert re.search(r"<h2>Benchmark \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)</h2>", page)


def test_lm_report_has_no_classification_sections_and_no_empty_ones(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "lm"
    tocha.fit(
        {"hidden": [16]},
        task="charlm",
        data={"path": str(text)},
        seq_len=16,
        batch_size=12,
        sample_chars=20,
        epochs=1,
        out=str(out),
        **QUIET,
    )
    html = _check_report(out / "report.html")
    assert "Confusion matrix" not in html and "classification report" not in html
    config = _config_block(html)
    assert "seq_len: 16" in config and "label_smoothing" not in config and "top_k" not in config


@pytest.mark.parametrize(("value", "shown"), [(1234567, "1,234,567"), (12345.678, "12,345.7"), (0.5, "0.5000")])
def test_big_numbers_get_thousands_separators(value, shown):
    from tocha.reports.html import _fmt

    assert _fmt(value) == shown
