"""`tocha compress` (int8 through ONNX Runtime, kept only if it pays) and `tocha bench-model`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tocha.cli import main as cli
from tocha.deploy import measure
from tocha.deploy.compress import Step, compress_run, judge


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_digits_cnn):
    out = tmp_path_factory.mktemp("compress") / "run"
    return train_digits_cnn(out, width=16, epochs=20)  # confident enough for int8


def step(name, acc, ms, mb=1.0):
    return Step(name, f"{name}.onnx", acc, ms, mb)


@pytest.mark.parametrize(
    "after, keep, words",
    [
        (step("int8", 0.899, 2.0, 0.25), True, ["2.50x faster", "4.0x smaller", "kept"]),
        (step("int8", 0.90, 6.0, 0.25), False, ["not faster", "rejected"]),
        (step("int8", 0.85, 1.0, 0.25), False, ["5.00 accuracy points", "allowed 1", "rejected"]),
        (step("int8", 0.891, 4.9), True, ["kept"]),
    ],
)
def test_a_step_is_kept_only_if_it_pays(after, keep, words):
    kept, reason = judge(step("fp32", 0.90, 5.0), after, max_accuracy_drop=1.0)
    assert kept is keep
    assert all(w in reason for w in words), reason


def test_compress_quantizes_measures_and_decides(run, tmp_path):
    report = compress_run(run, out=tmp_path / "c", echo=lambda *_: None)
    fp32, int8 = report["steps"]
    assert fp32["name"] == "fp32" and int8["name"] == "int8"
    assert int8["megabytes"] < fp32["megabytes"]  # int8 weights (a tiny net: the QDQ nodes weigh too)
    assert report["kept"] in (fp32["path"], int8["path"])
    assert ("kept" in report["decision"]) == (report["kept"] == int8["path"])
    assert json.loads((tmp_path / "c" / "compress.json").read_text())["decision"] == report["decision"]
    # The int8 model runs in ONNX Runtime and agrees with fp32 on nearly every test image.
    a, b = measure.open_artifact(fp32["path"]), measure.open_artifact(int8["path"])
    x, _ = measure.test_data(a.meta)
    agree = float(np.mean(a.predict(x).argmax(1) == b.predict(x).argmax(1)))
    assert agree >= 0.97, agree


def test_compress_prunes_fine_tunes_measures_and_reports(run, tmp_path):
    pytest.importorskip("torch_pruning")
    from tocha.recipes.runs import evaluate_run

    report = compress_run(run, out=tmp_path / "c", prune=0.5, finetune_epochs=1, quantize="none", echo=lambda *_: None)
    fp32, pruned = report["steps"]
    assert pruned["name"] == "pruned" and abs(pruned["macs"] / fp32["macs"] - 0.5) <= 0.05
    assert pruned["params"] < fp32["params"]
    assert len(report["decisions"]) == 1 and report["kept"] in (fp32["path"], pruned["path"])
    # The fine-tuned, pruned model is a run folder like any other: it evaluates and exports.
    result = evaluate_run(tmp_path / "c" / "pruned", write=False)
    assert abs(result.metrics.accuracy - pruned["test_accuracy"]) < 1e-9
    prune_info = json.loads((tmp_path / "c" / "pruned" / "prune.json").read_text())
    assert prune_info["macs_after"] == pruned["macs"]
    assert 'id="compress-' in (run / "report.html").read_text()


@pytest.mark.parametrize(
    "times, decided, keep, words",
    [((1.0, 2.0), True, False, "not faster"), ((2.0, 1.0), True, True, "kept"), ((2.0, 1.0), False, False, "noisy")],
)
def test_a_step_that_is_slower_is_rejected_and_its_file_renamed(
    run, tmp_path, monkeypatch, times, decided, keep, words
):
    """The decision uses the side-by-side timer; stubbed here so the outcome is known."""
    pairing = measure.Pairing(times[0], times[1], times[1], (times[0] / times[1],), decided, 1)
    monkeypatch.setattr(measure, "paired", lambda *_a, **_k: pairing)
    report = compress_run(run, out=tmp_path / "c", quantize="int8-dynamic", max_accuracy_drop=100, echo=lambda *_: None)
    fp32, int8 = report["steps"]
    # One timing, one verdict: both rows carry the numbers of the pairing the decision came from.
    assert (fp32["p50_ms"], int8["p50_ms"], int8["vs_p50_ms"]) == (times[0], times[1], times[0])
    assert (report["kept"] == int8["path"]) is keep
    assert int8["path"].endswith(".rejected.onnx") is not keep
    assert words in report["decision"]


def test_a_timing_whose_rounds_disagree_is_repeated_then_undecided():
    calls = {"a": 0}

    def jittery(x):  # alternately much faster and much slower than the steady one
        calls["a"] += 1
        time.sleep(0.004 if calls["a"] // 5 % 2 else 0.0005)

    pairing = measure.paired(jittery, lambda x: time.sleep(0.002), None, rounds=4, calls=5, attempts=2)
    assert not pairing.decided and pairing.attempts == 2
    steady = measure.paired(lambda x: time.sleep(0.004), lambda x: time.sleep(0.001), None, rounds=4, calls=3)
    assert steady.decided and steady.attempts == 1 and steady.speedup > 2


def test_bench_model_rows_for_every_artifact_and_batch(run, tmp_path, capsys):
    assert cli(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--samples", "64"]) == 0
    assert (
        cli(
            [
                "bench-model",
                str(run),
                str(tmp_path / "m.onnx"),
                "--batch",
                "1,16",
                "--calls",
                "5",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [(r["runtime"], r["batch"]) for r in rows] == [("torch", 1), ("torch", 16), ("ort", 1), ("ort", 16)]
    assert rows[0]["accuracy"] == rows[2]["accuracy"] is not None  # same model, same test split
    assert all(r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] and r["params"] > 0 for r in rows)
    assert rows[0]["macs"] == rows[2]["macs"] > 0  # counted on the model; carried in the ONNX metadata
    assert json.loads((run / "bench.json").read_text()) == rows  # recorded in the run folder too
    assert 'id="bench-model-' in (run / "report.html").read_text()


def test_bench_model_runs_a_run_folder_on_both_runtimes(run, tmp_path):
    rows = measure.bench_artifacts([str(run)], [4], calls=3, runtimes=("torch", "ort"))
    assert [r.runtime for r in rows] == ["torch", "ort"]
    assert rows[0].accuracy == rows[1].accuracy


@pytest.mark.parametrize(
    "args, words",
    [
        (["compress", "RUN", "--quantize", "int4"], ["unknown quantization", "int8"]),
        (["compress", "RUN", "--calibration", "magic"], ["calibration", "minmax"]),
        (["compress", "RUN", "--max-accuracy-drop", "-1"], ["out of range"]),
        (["bench-model", "nothing.onnx"], ["does not exist"]),
        (["bench-model", "RUN", "--batch", "x"], ["--batch"]),
        (["bench-model", "weights.bin"], ["cannot benchmark"]),
        (["bench-model", "RUN", "--runtime", "tensorrt"], ["unknown runtime", "torch, ort"]),
        (["compress", "RUN", "--prune", "1.0"], ["out of range", "between 0 and 1"]),
        (["compress", "RUN", "--prune", "0.5", "--prune-method", "l1"], ["--prune-method", "channels, masks"]),
        (["compress", "RUN", "--prune", "0.5", "--finetune-epochs", "0"], ["--finetune-epochs", "at least 1"]),
        (["compress", "RUN", "--quantize", "none"], ["nothing to do"]),
    ],
)
def test_bad_compress_and_bench_model_arguments(run, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert cli([str(run) if a == "RUN" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err, err


def test_a_quantizer_failure_is_a_clear_error(run, tmp_path, monkeypatch, capsys):
    """An operator the quantizer cannot handle ends with exit 2 and a way forward, not a traceback."""
    from tocha.deploy import compress

    def unsupported(*_a, **_k):
        raise RuntimeError("Unsupported operator: FancyOp\nmore detail")

    monkeypatch.setattr(compress, "quantize_onnx", unsupported)
    assert cli(["compress", str(run), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "int8 quantization" in err and "FancyOp" in err and "int8-dynamic" in err and "Traceback" not in err
    assert (tmp_path / "c" / "model-fp32.onnx").exists()  # the fp32 export stays usable


def test_compressing_a_language_model_run_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "lm"
    run.mkdir()
    (run / "config.yaml").write_text("task: charlm\n")
    (run / "meta.json").write_text('{"task": "charlm", "model": {"name": "charlm"}}')  # as a real one: task and model
    assert cli(["compress", str(run)]) == 2
    err = capsys.readouterr().err
    assert "character language model" in err and "Traceback" not in err
    assert not (run / "compressed").exists()


def test_goal_search_writes_every_candidate_and_the_chosen_model(run, tmp_path, capsys):
    out = tmp_path / "g"
    args = ["compress", str(run), "--goal", "speedup=50", "--max-drop", "2", "--prune", "0", "--out", str(out)]
    assert cli(args) == 0  # int8 only (--prune 0): the real timer, in fresh processes
    printed = capsys.readouterr().out
    report = json.loads((out / "compress.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names[0] == "fp32" and names[1:] == ["int8-minmax", "int8-percentile", "int8-dynamic"]
    assert not report["met"] and "goal speedup=50 missed" in report["why"] and report["why"] in printed
    for c in report["candidates"][1:]:
        assert c["fp32_ms"] > 0 and c["p50_ms"] > 0 and c["why"]
        assert c["speedup"] == pytest.approx(c["fp32_ms"] / c["p50_ms"])
    assert any(c["pareto"] for c in report["candidates"])
    # The chosen artifact predicts what its row says.
    chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
    model = measure.open_artifact(str(out / "model.onnx"))
    assert measure.accuracy(model, measure.split_data(model.meta, "val")) == chosen["val_accuracy"]
    assert 'id="compress-' in (run / "report.html").read_text()


def test_a_latency_goal_fp32_already_meets_exits_2(run, tmp_path, capsys):
    assert cli(["compress", str(run), "--goal", "latency_ms=100000", "--out", str(tmp_path / "g")]) == 2
    assert "already met" in capsys.readouterr().err
