"""The compression search (`tocha compress --goal`) end to end on a tiny digits CNN, with a stubbed timer.

The timer is the one thing stubbed: a candidate's latency is its MACs (from the file's metadata)
times a cost per MAC, int8 files twice as slow per MAC as fp32 (as on this CPU for a small CNN).
Everything else is real: pruning, the distilled fine-tune, int8 with fallback, ONNX Runtime
accuracy, compress.json, the plot and the report section.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import onnx
import pytest

from tocha.cli import main as cli
from tocha.deploy import goals, search
from tocha.deploy.artifact import METADATA_KEY
from tocha.deploy.timing import Pairing


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_digits_cnn):
    out = tmp_path_factory.mktemp("search") / "run"
    return train_digits_cnn(out, width=16, epochs=20)


def cost_ms(file: Path) -> float:
    info = json.loads(next(p.value for p in onnx.load(str(file)).metadata_props if p.key == METADATA_KEY))
    return info["macs"] / 1e4 * (2.0 if "int8" in file.name else 1.0)


def stub_timer(calls: list | None = None):
    def timer(a: Path, b: Path) -> Pairing:
        if calls is not None:
            calls.append(Path(b).name)
        ms_a, ms_b = cost_ms(a), cost_ms(b)
        return Pairing(ms_a, ms_b, ms_b, (ms_a / ms_b,) * 8, True, 1, ms_a)

    return timer


def compress(run, out: Path, goal: str, *, max_drop=10.0, budget=600.0, timer=None, prune=None, epochs=4, echo=None):
    from tocha import folders

    folders.prepare(out, "compress", overwrite=False, where="test", label="out", overwrite_flag="--overwrite")
    options = {"target": "macs", "scope": "uniform", "rounds": 1, "epochs": epochs, "lr": None, "round_to": 8}
    return search.goal_compress(
        run,
        out,
        goal=goals.parse_goal(goal),
        max_drop=max_drop,
        time_budget_s=budget,
        batch=16,
        prune=prune,
        prune_options=options,
        calibration_batches=2,
        echo=echo or (lambda *_: None),
        timer=timer or stub_timer(),
    )


@pytest.mark.slow  # fine-tunes a pruned model
def test_pruning_ratio_is_bisected_on_measured_latency_and_the_goal_is_met(run, tmp_path):
    out = tmp_path / "met"
    report = compress(run, out, "speedup=1.6")
    rows = {c["name"]: c for c in report["candidates"]}
    assert report["met"], [(c["name"], c["why"]) for c in report["candidates"]]
    chosen = rows[report["chosen"]]
    assert chosen["name"].startswith("pruned-") and chosen["kept"] and chosen["speedup"] >= 1.6
    # int8 files are slower here (the stub's cost): rejected as not faster, and so never tried on the pruned model.
    assert "not faster" in rows["int8-minmax"]["why"] and not any("+int8" in n for n in rows)
    # Bisection: every probed ratio below the chosen one misses the latency target, the chosen one meets it.
    ratio = float(chosen["name"].removeprefix("pruned-"))
    probes = report["pruning_probes"]
    assert len(probes) >= 3 and any(p["ratio"] == ratio and p["meets"] for p in probes)
    assert all(not p["meets"] for p in probes if p["ratio"] < ratio)
    # The fine-tune learned from the unpruned model.
    assert json.loads((out / f"pruned-{chosen['name'].removeprefix('pruned-')}" / "prune.json").read_text())[
        "distilled"
    ]
    assert (out / "tradeoff.png").stat().st_size > 1000
    page = (run / "report.html").read_text()
    assert "Compression search" in page and 'data-file="tradeoff.png"' in page and "data:image/png;base64," in page


@pytest.mark.slow  # fine-tunes a pruned model
def test_the_chosen_artifact_predicts_what_its_row_says(run, tmp_path, capsys):
    out = tmp_path / "same"
    report = compress(run, out, "speedup=1.3")
    chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
    for split, key in (("val", "val_accuracy"), ("test", "test_accuracy")):
        assert cli(["eval", str(out / "model.onnx"), "--split", split, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(chosen[key], abs=1e-12)
    assert (out / "model.onnx.eval-test.json").is_file()


@pytest.mark.slow  # fine-tunes a pruned model
def test_a_goal_out_of_reach_returns_the_best_found_and_says_why(run, tmp_path):
    report = compress(run, tmp_path / "missed", "speedup=1000", max_drop=100.0)
    assert not report["met"] and "goal speedup=1000 missed" in report["why"]
    probes = report["pruning_probes"]
    assert probes[0]["ratio"] == search.MAX_PRUNE and not probes[0]["meets"] and len(probes) == 1
    assert report["chosen"] == f"pruned-{search.MAX_PRUNE:g}"  # the fastest within the (wide) accuracy budget


@pytest.mark.slow  # fine-tunes a pruned model
def test_a_milder_ratio_that_times_slower_than_fp32_is_not_fine_tuned(run, tmp_path):
    """Fewer MACs can run slower (on an AVX-512 CPU a channel count of 24 does): after the strongest
    pruning costs too much, a milder probe that cannot beat fp32 is not worth a fine-tune."""

    def timer(a: Path, b: Path) -> Pairing:
        milder = Path(b).parent.name == "probes" and float(Path(b).stem.removeprefix("pruned-")) < search.MAX_PRUNE
        ms_a, ms_b = cost_ms(a), cost_ms(b) * (100.0 if milder else 1.0)
        return Pairing(ms_a, ms_b, ms_b, (ms_a / ms_b,) * 8, True, 1, ms_a)

    lines: list[str] = []
    report = compress(  # no fine-tune: 85% of the MACs pruned surely costs more than a point (here: 63)
        run,
        tmp_path / "slower",
        "speedup=1000",
        max_drop=1.0,
        timer=timer,
        epochs=0,
        echo=lambda *a: lines.append(" ".join(a)),
    )
    rows = {c["name"]: c for c in report["candidates"]}
    strongest = rows[f"pruned-{search.MAX_PRUNE:g}"]
    assert "val accuracy points" in strongest["why"], strongest  # the premise: it cost too much
    assert [n for n in rows if n.startswith("pruned-")] == [f"pruned-{search.MAX_PRUNE:g}"]
    # The milder ratio lies where the line from no pruning (no cost) to this drop reaches the budget.
    drop = (rows["fp32"]["val_accuracy"] - strongest["val_accuracy"]) * 100
    milder = round(search.MAX_PRUNE * 1.0 / drop, 3)
    assert [p["ratio"] for p in report["pruning_probes"]] == [search.MAX_PRUNE, milder]
    assert any(f"milder prune {milder:g} timed" in line and "not fine-tuned" in line for line in lines), lines


def test_the_time_budget_stops_the_search_with_what_is_finished(run, tmp_path):
    calls = []
    report = compress(run, tmp_path / "budget", "speedup=1.6", budget=1e-6, timer=stub_timer(calls))
    assert report["stopped"] == "time budget" and not report["met"] and calls == ["model-fp32.onnx"]
    assert [c["name"] for c in report["candidates"]] == ["fp32"] and report["chosen"] == "fp32"
    assert "stopped: time budget, 0 candidates tried" in report["why"]
    # The best so far (here fp32) is still the result, with its row and the report.
    assert (tmp_path / "budget" / "model.onnx").read_bytes() == (tmp_path / "budget" / "model-fp32.onnx").read_bytes()


@pytest.mark.slow  # fine-tunes a pruned model
def test_ctrl_c_keeps_every_finished_candidate(run, tmp_path):
    def interrupting(a, b):
        if "pruned" in Path(b).name and "probes" not in str(b):
            raise KeyboardInterrupt
        return stub_timer()(a, b)

    report = compress(run, tmp_path / "ctrl-c", "speedup=1.6", timer=interrupting)
    names = [c["name"] for c in report["candidates"]]
    assert report["stopped"] == "interrupted" and names[:4] == [
        "fp32",
        "int8-minmax",
        "int8-percentile",
        "int8-dynamic",
    ]
    assert json.loads((tmp_path / "ctrl-c" / "compress.json").read_text())["stopped"] == "interrupted"


@pytest.mark.slow  # fine-tunes a pruned model
def test_a_fixed_ratio_skips_the_bisection(run, tmp_path):
    report = compress(run, tmp_path / "fixed", "speedup=1.2", prune=0.5)
    assert report["pruning_probes"] == [] and any(c["name"] == "pruned-0.5" for c in report["candidates"])
    shutil.rmtree(tmp_path / "fixed")


@pytest.mark.slow  # fine-tunes two pruned models
def test_a_pruned_model_within_budget_that_misses_the_goal_tries_a_stronger_ratio_aimed_at_the_shortfall(run, tmp_path):
    """A finished model can time slower than its probe did (noise, or int8 adding less): the search
    then fine-tunes a stronger ratio, bisected for the speed the finished model fell short by,
    instead of stopping short or jumping to the strongest pruning."""

    def cost(file: Path) -> float:  # finished models 1.5x slower than their probes
        return cost_ms(file) * (1.0 if Path(file).parent.name == "probes" or file.name == "model-fp32.onnx" else 1.5)

    def timer(a: Path, b: Path) -> Pairing:
        ms_a, ms_b = cost(a), cost(b)
        return Pairing(ms_a, ms_b, ms_b, (ms_a / ms_b,) * 8, True, 1, ms_a)

    lines: list[str] = []
    report = compress(run, tmp_path / "stronger", "speedup=1.6", timer=timer, echo=lambda *a: lines.append(" ".join(a)))
    pruned = [c for c in report["candidates"] if c["name"].startswith("pruned-") and "+int8" not in c["name"]]
    assert len(pruned) >= 2, [(c["name"], c["why"]) for c in report["candidates"]]
    first, second = (float(c["name"].removeprefix("pruned-")) for c in pruned[:2])
    assert first < second < search.MAX_PRUNE  # stronger, but not the strongest there is
    # Each probe line carries the verdict of the bisection that asked for it: after the shortfall
    # line, the aim is the shortfall's speed, never the first bisection's pruning target.
    start = next(i for i, line in enumerate(lines) if f"prune {first:g} fell short by" in line)
    end = next(i for i, line in enumerate(lines) if i > start and f"trying prune {second:g}" in line)
    second_probes = [line for line in lines[start:end] if "probe prune" in line]
    assert second_probes and all(("reaches" in line) != ("short of" in line) for line in second_probes), lines
    assert not any("pruning target" in line for line in second_probes)
    assert any(f"probe prune {second:.3f}" in line and "reaches" in line for line in second_probes)
    assert pruned[0]["speedup"] < 1.6 and "within" in pruned[0]["why"]


# ----------------------------------------------------------------------------- the plan after each fine-tune
# Attempts are written by hand here (their accuracy is what the plan reads); probes are real, timed by the stub.


def planner(run, tmp_path, goal: str, *, max_drop=1.0, epochs=2, budget=600.0, lines=None):
    s = search.GoalSearch(
        run,
        tmp_path,
        goal=goals.parse_goal(goal),
        max_drop=max_drop,
        time_budget_s=budget,
        batch=16,
        prune=None,
        prune_options={"target": "macs", "scope": "uniform", "rounds": 1, "epochs": epochs, "lr": None, "round_to": 8},
        calibration_batches=2,
        echo=(lambda *a: lines.append(" ".join(a))) if lines is not None else (lambda *_: None),
        timer=stub_timer(),
    )
    (tmp_path / "probes").mkdir(parents=True, exist_ok=True)
    return s, s.start()


def attempt(ratio, epochs, drop, *, fast=False, macs=None, kept=()):
    macs = macs if macs is not None else int(1e6 * (1 - ratio))
    return search.Attempt(ratio, epochs, macs, drop, fast, False, list(kept))


def test_a_fast_enough_ratio_that_costs_too_much_is_fine_tuned_twice_as_long(run, tmp_path):
    lines: list[str] = []
    s, ref = planner(run, tmp_path, "speedup=2", lines=lines)
    assert s.next_plan([attempt(0.6, 2, 2.5, fast=True)], ref) == (0.6, 4)
    assert any("fine-tuning it for 4 epochs instead of 2" in line for line in lines), lines
    # Doubling again is worth it only while the last doubling recovered at least the points still missing.
    assert s.next_plan([attempt(0.6, 2, 4.0, fast=True), attempt(0.6, 4, 2.0, fast=True)], ref) == (0.6, 8)
    lines.clear()
    plan = s.next_plan([attempt(0.6, 2, 2.5, fast=True), attempt(0.6, 4, 2.0, fast=True)], ref)
    assert any("recovered 0.50 val points over 2; 1.00 are still missing" in line for line in lines), lines
    assert plan == (0.3, 4)  # milder instead, fine-tuned as long as the last: 0.6 * 1.0 / 2.0
    # ... and never beyond MAX_EPOCH_FACTOR times --finetune-epochs.
    assert s.longer([attempt(0.6, 8, 3.0, fast=True)]) is None


def test_a_milder_ratio_is_where_the_measured_drops_put_the_budget(run, tmp_path):
    lines: list[str] = []
    s, ref = planner(run, tmp_path, "speedup=2", lines=lines)
    # From no pruning (0 points) to 0.6 at 3 points: 1 point lies at 0.2.
    assert s.next_plan([attempt(0.6, 2, 3.0)], ref) == (0.2, 2)
    assert s.probes[-1].ratio == 0.2
    assert any("where the drops so far put the budget (1 val points)" in line for line in lines), lines
    # Between a ratio within the budget (0.2 at 0.5 points) and one over it (0.6 at 3.0): 0.28.
    assert s.next_plan([attempt(0.2, 2, 0.5), attempt(0.6, 2, 3.0)], ref) == (0.28, 2)
    # A milder ratio that prunes to a net already tried is not fine-tuned again.
    same = s.probe_at(0.28, ref.p50_ms).macs
    lines.clear()
    assert s.next_plan([attempt(0.2, 2, 0.5, macs=same), attempt(0.6, 2, 3.0)], ref) is None
    assert any("no milder pruning differs from it" in line for line in lines), lines


def test_a_stronger_ratio_stops_short_of_one_that_already_cost_too_much(run, tmp_path):
    lines: list[str] = []
    s, ref = planner(run, tmp_path, "speedup=1000", lines=lines)
    # Within the budget and short of a goal no probe reaches: the second bisection would give the
    # strongest ratio, but 0.6 already cost 3 points, so halfway between.
    short = dataclasses.replace(ref, name="pruned-0.28", p50_ms=ref.p50_ms / 1.3, kept=True)
    plan = s.next_plan([attempt(0.6, 2, 3.0), attempt(0.28, 2, 0.5, kept=[short])], ref)
    assert plan == (0.44, 2), lines
    assert any("prune 0.6 already cost too much: halfway instead, prune 0.44" in line for line in lines), lines
    # When the bracket has closed (that ratio prunes to a net already fine-tuned), the search stops.
    same = s.probe_at(0.44, ref.p50_ms).macs
    lines.clear()
    assert s.next_plan([attempt(0.6, 2, 3.0), attempt(0.28, 2, 0.5, macs=same, kept=[short])], ref) is None
    assert any("prune 0.44 prunes to the net of pruned-0.28: stopping" in line for line in lines), lines


def test_a_fine_tune_that_would_not_fit_in_the_time_left_is_not_started(run, tmp_path):
    lines: list[str] = []
    s, _ = planner(run, tmp_path, "speedup=2", budget=100.0, lines=lines)
    s.epoch_seconds = [10.0, 12.0]  # the slowest epoch so far is the estimate
    s.started = time.monotonic() - 70.0  # 30 s left
    assert s.affordable(0.5, 2) == (0.5, 2)  # about 24 s
    assert s.affordable(0.5, 4) is None  # about 48 s
    assert any("prune 0.5 for 4 epochs would take about 48 s; 30 s of the budget is left" in line for line in lines)
