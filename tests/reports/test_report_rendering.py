"""report.html as a browser shows it: headless Chromium renders the report of a classify run and of a
character language-model run, trained by the CLI. Every heading has visible content below it, every
embedded PNG decodes into a picture that is not blank, nothing scrolls sideways (generated text
wraps), and a language model's report has no classification sections at all.

Chromium is Debian's package (`bash scripts/setup.sh --tests` installs it as root); without it these
tests skip and say so."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
TOCHA = [sys.executable, "-m", "tocha.cli"]
QUIET = ["threads=1", "log.tensorboard=false", "log.progress=false"]
WIDTH_PX = 1024  # a laptop browser window

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"{CHROMIUM} is missing: `bash scripts/setup.sh --tests` installs Debian's chromium (as root)",
)

# Runs in the page after it has loaded (images decoded, layout done) and leaves what it measured in
# the DOM as JSON, where --dump-dom brings it back.
PROBE = """
<script>
window.addEventListener("load", () => {
  const box = (el) => el.getBoundingClientRect();
  const visible = (el) => box(el).width > 0 && box(el).height > 0;
  const sections = [...document.querySelectorAll("h2")].map((h) => {
    const below = [];
    for (let el = h.nextElementSibling; el && !["H2", "SECTION"].includes(el.tagName); el = el.nextElementSibling)
      below.push(el);
    return {
      heading: h.innerText,
      text: below.map((el) => el.innerText).join(" ").trim(),
      visible: below.filter(visible).length,
      images: below.flatMap((el) => [...(el.tagName === "IMG" ? [el] : el.querySelectorAll("img"))]).length,
    };
  });
  const images = [...document.images].map((img) => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const colours = new Set();
    if (img.naturalWidth > 0) {
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < px.length && colours.size < 50; i += 4 * 97) colours.add(px.slice(i, i + 4).join());
    }
    return {
      file: img.dataset.file || img.getAttribute("src").slice(0, 40),
      embedded: img.getAttribute("src").startsWith("data:image/png;base64,"),
      complete: img.complete,
      naturalWidth: img.naturalWidth,
      shownWidth: Math.round(box(img).width),
      colours: colours.size,
    };
  });
  const sideways = [...document.querySelectorAll("pre, table, img, div")]
    .filter((el) => el.scrollWidth > el.clientWidth + 1 || box(el).right > document.documentElement.clientWidth + 1)
    .map((el) => el.tagName + ": " + (el.innerText || el.dataset.file || "").slice(0, 60));
  const page = document.documentElement;
  const out = document.createElement("pre");
  out.id = "tocha-probe";
  out.textContent = JSON.stringify({
    sections, images, sideways,
    sectionElements: [...document.querySelectorAll("section")].map((s) => s.innerText.trim().length),
    pageScrollsSideways: page.scrollWidth > page.clientWidth,
    bodyText: document.body.innerText,
  });
  document.body.append(out);
});
</script>
"""


def render(report: Path, workdir: Path) -> dict:
    """Open a copy of `report` with the probe appended in headless Chromium; return what the probe saw."""
    page = workdir / f"rendered-{report.parent.name}.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    profile = workdir / f"chromium-profile-{report.parent.name}"
    profile.mkdir()
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH_PX},800",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.find('<pre id="tocha-probe">')
    assert start >= 0, f"the probe did not run in Chromium; stderr: {done.stderr[-2000:]}"
    body = done.stdout[start + len('<pre id="tocha-probe">') :]
    return json.loads(unescape(body[: body.index("</pre>")]))


def assert_renders_completely(seen: dict) -> None:
    assert seen["sections"], "no <h2> headings rendered"
    for s in seen["sections"]:
        assert s["visible"] and (s["text"] or s["images"]), f"section {s['heading']!r} renders empty"
    assert all(seen["sectionElements"]), "a <section> renders empty"
    assert "not available" not in seen["bodyText"]
    assert seen["images"], "no images rendered"
    for img in seen["images"]:
        assert img["embedded"], f"{img['file']} is not embedded: the page is not one self-contained file"
        assert img["complete"] and img["naturalWidth"] > 0, f"{img['file']} does not decode"
        assert img["shownWidth"] > 0, f"{img['file']} is not laid out"
        assert img["colours"] > 2, f"{img['file']} decodes to a blank picture"
    assert not seen["pageScrollsSideways"] and not seen["sideways"], f"scrolls sideways: {seen['sideways']}"


def tocha(args: list[str], cwd: Path) -> None:
    done = subprocess.run(
        [*TOCHA, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "100"}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_classify_report_renders_with_every_section_filled(tmp_path):
    tocha(["train", "data=digits", "model=cnn", "model.width=4", "epochs=1", *QUIET, "out=runs/cls"], tmp_path)
    tocha(["bench-model", "runs/cls", "--batch", "1", "--calls", "5"], tmp_path)  # a later command's dated section
    seen = render(tmp_path / "runs/cls/report.html", tmp_path)
    assert_renders_completely(seen)
    headings = [s["heading"] for s in seen["sections"]]
    for heading in ("Summary", "Training curves", "Confusion matrix", "Test classification report"):
        assert heading in headings, headings
    assert any(h.startswith("Deployment benchmark") for h in headings), headings
    assert {img["file"] for img in seen["images"]} == {"curves.png", "confusion_matrix.png"}


@pytest.mark.slow
def test_language_model_report_renders_without_classification_sections(tmp_path):
    # Long lines, so that a sample that does not wrap would scroll sideways.
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the red box while birds sang".split()
    lines = (" ".join(rng.choice(words) for _ in range(80)) for _ in range(40))
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    lm = ["model.hidden=16", "model.layers=1", "seq_len=16", "batch_size=16", "epochs=1", "sample_chars=400"]
    tocha(["train", "task=charlm", "data=text", "data.path=corpus.txt", *lm, *QUIET, "out=runs/lm"], tmp_path)
    seen = render(tmp_path / "runs/lm/report.html", tmp_path)
    assert_renders_completely(seen)
    headings = [s["heading"] for s in seen["sections"]]
    assert not [h for h in headings if "onfusion" in h or "classification" in h], headings
    # The language model's own sections come before the generic ones.
    assert headings.index("Generated text") < headings.index("Training curves"), headings
    assert headings.index("Language model against the 3-gram baseline") < headings.index("Generated text")
    assert {img["file"] for img in seen["images"]} == {"curves.png"}


def test_the_rendering_check_finds_an_empty_section_a_broken_image_and_sideways_text(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "report.html").write_text(
        "<!DOCTYPE html><html><body><h2>Empty</h2><div></div><h2>Broken</h2>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==" data-file="broken.png">'
        f"<h2>Samples</h2><pre>{'x' * 400}</pre></body></html>"
    )
    seen = render(run / "report.html", tmp_path)
    empty, broken, samples = seen["sections"]
    assert not empty["visible"] and not empty["text"]
    assert seen["images"][0]["naturalWidth"] == 0
    assert samples["text"] and any(s.startswith("PRE") for s in seen["sideways"])
    with pytest.raises(AssertionError, match="'Empty' renders empty"):
        assert_renders_completely(seen)


def test_a_wide_benchmark_table_fits_the_window(tmp_path):
    from tocha.reports.html import _CSS, table_html

    # The rows of `tocha bench-model runs/cnn runs/cnn/export/model.onnx`: the path made the table wider than 1024 px.
    row = {"artifact": "runs/cnn/export/model.onnx", "runtime": "ort", "batch": 64, "p50 ms": 11.568}
    row |= {"p90 ms": 33.0118, "samples/s": 36123.4, "MB": 0.2021, "params": 52410, "MACs": 2310528}
    row |= {"test accuracy": 0.7055}
    page = f"<h2>Deployment benchmark (tocha bench-model) (2026-12-02 10:32:49)</h2>{table_html([row, row])}"
    page += "<h2>Resolved configuration</h2><pre>" + "key: value\n" * 100 + "</pre>"  # as tall as a report
    run = tmp_path / "wide"
    run.mkdir()
    (run / "report.html").write_text(
        f"<!DOCTYPE html><html><head><style>{_CSS}</style></head><body>{page}</body></html>"
    )
    seen = render(run / "report.html", tmp_path)
    assert not seen["pageScrollsSideways"] and not seen["sideways"], seen["sideways"]
