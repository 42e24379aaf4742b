"""A single self-contained HTML page summarising one run.

Inline CSS, no JavaScript, no external URLs: the page opens from a copied run folder, offline.
Images are PNG files written next to it and referenced by relative name.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tocha.metrics.classification import ClassificationMetrics

__all__ = ["write_report"]

REPORT_NAME = "report.html"
CURVES_NAME = "curves.png"
CONFUSION_NAME = "confusion_matrix.png"
_NOT_AVAILABLE = '<p class="na">not available</p>'

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card .label { font-size: 0.8em; color: #666; }
.card .value { font-size: 1.3em; font-weight: 600; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
tr.avg td { background: #fafafa; font-weight: 600; }
pre { background: #f6f6f6; padding: 1em; font-size: 0.85em;
      white-space: pre-wrap; overflow-wrap: anywhere; }  /* generated text wraps, never scrolls sideways */
img { max-width: 100%; }
.na { color: #888; font-style: italic; }
.wide { overflow-x: auto; }
"""


def _fmt(value: Any, digits: int = 4) -> str:
    """Text for one value: floats rounded, everything else via str; always escaped."""
    if isinstance(value, bool) or value is None:
        return escape(str(value))
    if isinstance(value, float):  # big numbers get thousands separators (12,345.6)
        if not math.isfinite(value):
            return escape(str(value))
        return escape(f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.{digits}f}")
    if isinstance(value, int):
        return escape(f"{value:,}")
    return escape(str(value))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        # Flat metrics are already prefixed ("test" -> "test.accuracy"); don't say it twice.
        name = str(key) if str(key).startswith(prefix) else f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _headline(summary: Mapping[str, Any], test: ClassificationMetrics | None, val: ClassificationMetrics | None) -> str:
    cards: list[tuple[str, str]] = []
    best = summary.get("best")
    if isinstance(best, Mapping) and "value" in best:
        label = f"best {best.get('metric', 'metric')}"
        if best.get("epoch") is not None:
            label += f" (epoch {best['epoch']})"
        cards.append((label, _fmt(best["value"])))
    for split, metrics in (("test", test), ("val", val)):
        if metrics is not None:
            cards.append((f"{split} accuracy", _fmt(metrics.accuracy)))
        else:
            flat = summary.get(split)
            if isinstance(flat, Mapping):
                value = flat.get(f"{split}.accuracy", flat.get("accuracy"))
                if value is not None:
                    cards.append((f"{split} accuracy", _fmt(value)))
    units = (
        ("epochs", "epochs", ""),
        ("wall_seconds", "wall time", " s"),
        ("train_samples_per_second", "train throughput", " samples/s"),
        ("peak_memory_mb", "peak memory", " MB"),
        ("device", "device", ""),
    )
    for key, label, unit in units:
        if summary.get(key) is not None:
            digits = 1 if isinstance(summary[key], float) else 0
            cards.append((label, _fmt(summary[key], digits) + escape(unit)))
    if not cards:
        return _NOT_AVAILABLE
    body = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{value}</div></div>'
        for label, value in cards
    )
    return f'<div class="cards">{body}</div>'


def _key_value_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in items)
    if not rows:
        return _NOT_AVAILABLE
    return f"<table><tbody>{rows}</tbody></table>"


def _class_report_table(m: ClassificationMetrics, digits: int = 4) -> str:
    head = "<thead><tr><th>class</th><th>precision</th><th>recall</th><th>f1-score</th><th>support</th></tr></thead>"

    def row(r: Any, css: str = "") -> str:
        cls = f' class="{css}"' if css else ""
        return (
            f"<tr{cls}><td>{escape(r.name)}</td><td>{_fmt(r.precision, digits)}</td>"
            f"<td>{_fmt(r.recall, digits)}</td><td>{_fmt(r.f1, digits)}</td>"
            f"<td>{r.support}</td></tr>"
        )

    body = "".join(row(r) for r in m.per_class)
    body += (
        f'<tr class="avg"><td>accuracy</td><td></td><td></td>'
        f"<td>{_fmt(m.accuracy, digits)}</td><td>{m.n_samples}</td></tr>"
    )
    body += row(m.macro, "avg") + row(m.weighted, "avg")
    table = f"<table>{head}<tbody>{body}</tbody></table>"

    extras = [(f"top-{k} accuracy", v) for k, v in sorted(m.top_k_accuracy.items())]
    extras += [
        (name, v) for name, v in (("ROC AUC", m.roc_auc), ("PR AUC (average precision)", m.pr_auc)) if v is not None
    ]
    if extras:
        table += _key_value_table(extras)
    return table


def embedded_png(path: Path, alt: str) -> str:
    """An <img> holding the PNG itself (a data URI): the page stays one self-contained file."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}" data-file="{escape(Path(path).name)}">'


def _image(name: str, alt: str, run_dir: Path | None = None) -> str:
    """The PNG embedded as a data URI, so that report.html is one self-contained file (the PNG stays beside it)."""
    path = None if run_dir is None else run_dir / name
    if path is None or not path.is_file():
        return f'<img src="{escape(name)}" alt="{escape(alt)}">'
    return embedded_png(path, alt)


def _embed_pngs(html: str, run_dir: Path) -> str:
    import re

    def embed(match):
        path = run_dir / match.group(1)
        if "/" in match.group(1) or not path.is_file():
            return match.group(0)
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{encoded}" data-file="{match.group(1)}"'

    return re.sub(r'<img src="([^"]+\.png)"', embed, html)


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    config_text: str,
    test_metrics: ClassificationMetrics | None,
    val_metrics: ClassificationMetrics | None,
    history: list[dict[str, Any]],
    extra_sections: Sequence[tuple[str, str]] = (),
    plots: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/report.html`` plus the PNGs it shows; return the HTML path.

    ``extra_sections`` are a task's own (heading, HTML) pairs, shown after the summary: the HTML
    must already be escaped by the caller. ``plots`` maps a PNG name to a callable writing it.
    The classification sections appear only for a run with classification metrics.
    """
    from tocha.reports.plots import plot_confusion, plot_curves

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str]] = []

    sections.append(("Summary", _headline(summary, test_metrics, val_metrics)))
    for name, draw in (plots or {}).items():
        draw(run_dir / name)
    sections += list(extra_sections)

    if history:
        plot_curves(history, run_dir / CURVES_NAME)
        curves = _image(CURVES_NAME, "training curves: loss, accuracy and learning rate", run_dir)
    else:
        curves = _NOT_AVAILABLE
    sections.append(("Training curves", curves))

    # Test numbers are the ones to trust; validation was used for model selection.
    cm_source = test_metrics if test_metrics is not None else val_metrics
    if cm_source is not None:  # a classifier: confusion matrix and class reports
        split = "test" if test_metrics is not None else "validation"
        plot_confusion(cm_source.confusion, cm_source.classes, run_dir / CONFUSION_NAME)
        cm_html = (
            f"<p>{escape(split)} set, rows are true classes, columns predicted; "
            f"colour is the row-normalised rate, numbers are counts.</p>"
            + _image(CONFUSION_NAME, f"{split} confusion matrix", run_dir)
        )
        sections.append(("Confusion matrix", cm_html))
        for split, metrics in (("Test", test_metrics), ("Validation", val_metrics)):
            if metrics is not None:  # a run without a test split shows no empty test section
                sections.append((f"{split} classification report", _class_report_table(metrics)))

    sections.append(("All summary values", _key_value_table(_flatten(summary))))
    config_html = f"<pre>{escape(config_text)}</pre>" if config_text.strip() else _NOT_AVAILABLE
    sections.append(("Resolved configuration", config_html))

    # Extra sections arrive as HTML already; only their headings are escaped here.
    body = "".join(f"<h2>{escape(heading)}</h2>\n{content}\n" for heading, content in sections)
    body = _embed_pngs(body, run_dir)  # a task's own plots too (regression.png ...)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}</body>\n</html>\n"
    )
    from tocha.engine.checkpoint import write_text_atomic

    out = run_dir / REPORT_NAME
    write_text_atomic(out, page)  # a full disk never leaves half a page in place of the last one
    return out


def table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain HTML table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return _NOT_AVAILABLE
    columns = list(rows[0])
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)

    # A path may break after a slash (runs/cnn/export/model.onnx made a 10-column table wider than a
    # 1024-pixel window); a table that is still too wide scrolls in its own box, never the page.
    def cell(value: Any) -> str:
        return f"<td>{_fmt(value).replace('/', '/<wbr>')}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>\n" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>'


def upsert_section(run_dir: Path, section_id: str, title: str, inner_html: str, *, dated: bool = True) -> bool:
    """Add one `<section id=...>` to a run's report.html; False when the run has no report.

    Later commands (`tocha bench-model`, `tocha compress`) put their tables into the run's one page.
    `dated`: every call adds its own section, titled with the time it ran (earlier ones stay);
    otherwise a section of the same id is replaced.
    """
    import datetime

    if dated:
        now = datetime.datetime.now().astimezone()
        section_id = f"{section_id}-{now:%Y%m%d-%H%M%S-%f}"
        title = f"{title} ({now:%Y-%m-%d %H:%M:%S})"
    import re

    from tocha.engine.checkpoint import write_text_atomic

    path = Path(run_dir) / REPORT_NAME
    if not path.is_file():
        return False
    page = path.read_text(encoding="utf-8")
    section = f'<section id="{section_id}">\n<h2>{escape(title)}</h2>\n{inner_html}\n</section>\n'
    pattern = re.compile(f'<section id="{re.escape(section_id)}">.*?</section>\n', re.S)
    if pattern.search(page):
        page = pattern.sub(lambda _m: section, page, count=1)
    else:
        page = page.replace("</body>", section + "</body>", 1)
    write_text_atomic(path, page)
    return True
