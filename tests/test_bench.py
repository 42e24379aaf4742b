"""`tocha bench`: the CLI end to end (quick mode) and the table/median logic on made-up measures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tocha.bench.runners import Measure
from tocha.bench.suite import Summary, parse_devices, parse_runners, summarise, table
from tocha.errors import UserError


def test_quick_bench_prints_a_row_for_every_runner(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tocha.cli", "bench", "--quick", "--data", "digits", "--json", "b.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("cpu ")}
    assert set(rows) == {"tutorial", "raw", "tocha", "lightning"}, proc.stdout
    for name in ("tutorial", "raw", "tocha"):
        assert "x" in rows[name] and "samples" not in rows[name]  # a measured row, not a note
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    measured = {r["runner"]: r for r in results if r["ms_per_step"] is not None}
    assert {"tutorial", "raw", "tocha"} <= set(measured)
    # The floor is the floor: the tutorial's per-sample input pipeline must cost more than slicing tensors.
    assert measured["tutorial"]["ms_per_step"] > measured["raw"]["ms_per_step"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in measured.values())


def test_bad_runner_and_device_are_user_errors(tmp_path):
    (tmp_path / "old.json").write_text("keep me")
    for args in (
        ["--runners", "raw,keras"],
        ["--devices", "tpu"],
        ["--json", "old.json"],
        ["--json", "missing/b.json"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "tocha.cli", "bench", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "tocha bench: error:" in proc.stderr and "runner" not in proc.stdout
    assert (tmp_path / "old.json").read_text() == "keep me"
    with pytest.raises(UserError):
        parse_runners("")
    assert parse_devices("cpu,cpu") == ["cpu"]


def test_cuda_alone_without_cuda_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from argparse import Namespace

    from tocha.bench.suite import main

    with pytest.raises(UserError, match="no CUDA"):
        main(
            Namespace(
                devices="cuda",
                runners="raw",
                quick=True,
                epochs=None,
                repeats=None,
                train_samples=None,
                data="digits",
                threads=None,
                model="mlp",
                batch_size=None,
                lr=None,
                target=None,
                seed=0,
                no_warmup=True,
                json=None,
            )
        )


def measure(runner, seconds, steps, curve, device="cpu"):
    m = Measure(runner, device, train_seconds=seconds, steps=steps, samples=steps * 100, curve=curve)
    m.peak_mb = 10.0
    return m


def test_summary_takes_medians_and_time_to_target():
    runs = [measure("raw", s, 100, [(s / 2, 0.7), (s, 0.85)]) for s in (1.0, 3.0, 2.0)]
    s = summarise(runs, target=0.8)
    assert s.ms_per_step == pytest.approx(20.0)
    assert s.samples_per_second == pytest.approx(100 * 100 / 2.0)
    assert s.time_to_target == pytest.approx(2.0) and s.accuracy == 0.85 and s.repeats == 3
    never = summarise([measure("raw", 1.0, 10, [(1.0, 0.5)])] * 3, target=0.8)
    assert never.time_to_target is None


def test_table_ratios_are_against_raw_and_tutorial_on_the_same_device():
    rows = [
        Summary("tutorial", "cpu", 1000.0, 100.0, 0.8, None, 50.0, 3),
        Summary("raw", "cpu", 20000.0, 5.0, 0.8, 1.0, 50.0, 3),
        Summary("tocha", "cpu", 19000.0, 5.25, 0.8, 1.1, 50.0, 3),
        Summary("lightning", "cpu", None, None, None, None, None, 0, "not installed (pip install lightning)"),
        Summary("tocha", "cuda", 190000.0, 0.5, 0.8, 0.1, 50.0, 3),
    ]
    text = table(rows, 0.8)
    tocha_cpu = next(line for line in text.splitlines() if line.startswith("cpu    tocha"))
    assert "1.05x" in tocha_cpu and "19.0x" in tocha_cpu
    assert "not installed" in text
    assert "cuda vs cpu, tocha: 10.0x" in text
