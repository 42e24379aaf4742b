"""End to end, as a user runs it: `tocha train task=charlm` on a tiny text, then `tocha generate`."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

TOCHA = [sys.executable, "-m", "tocha.cli"]
TINY = [
    "model.hidden=32",
    "model.layers=1",
    "seq_len=24",
    "batch_size=8",
    "epochs=2",
    "lr=0.02",
    "threads=1",
    "sample_chars=40",
    "log.tensorboard=false",
]


def tocha(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TOCHA, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120"},
    )


def tiny_corpus(path: Path) -> Path:
    rng = random.Random(0)
    vocabulary = "the cat sat on a mat and the dog ran to the red box while birds sang".split()
    path.write_text("\n".join(" ".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(120)))
    return path


def test_train_then_generate(tmp_path):
    tiny_corpus(tmp_path / "corpus.txt")
    trained = tocha(
        ["train", "task=charlm", "data=text", "data.path=corpus.txt", "model=lstm", *TINY, "out=runs/lm"], tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert "character 3-gram baseline" in trained.stdout and "report: runs/lm/report.html" in trained.stdout
    run = tmp_path / "runs" / "lm"
    for name in (
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "samples.txt",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    uniform_bpc = math.log2(summary["vocab_size"])
    assert summary["val"]["val.bpc"] < uniform_bpc - 1  # it learned something
    assert summary["bpc_reduction_vs_3gram"] == 1 - summary["val"]["val.bpc"] / summary["baseline_3gram"]["bpc"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert len(evals) == 2 and evals[1]["val.bpc"] < evals[0]["val.bpc"]
    assert (run / "samples.txt").read_text().count("=== step") == 2
    report = (run / "report.html").read_text()
    assert "3-gram" in report and "Generated text" in report

    first = tocha(["generate", "runs/lm", "--prompt", "the ", "--length", "60", "--seed", "3"], tmp_path)
    again = tocha(
        [
            "generate",
            "runs/lm/checkpoints/best.safetensors",
            "--prompt",
            "the ",
            "--length",
            "60",
            "--seed",
            "3",
            "--device",
            "cpu",
        ],
        tmp_path,
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout  # the checkpoint file alone gives the same text
    assert first.stdout.startswith("the ") and len(first.stdout.rstrip("\n")) == 64

    not_images = tocha(["predict", "runs/lm", "corpus.txt"], tmp_path)
    assert not_images.returncode == 2 and "tocha generate runs/lm" in not_images.stderr

    unknown = tocha(["generate", "runs/lm", "--prompt", "Zebra"], tmp_path)
    assert unknown.returncode == 2 and "'Z'" in unknown.stderr and "--skip-unknown" in unknown.stderr
    assert "Traceback" not in unknown.stderr
