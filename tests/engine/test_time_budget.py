"""time_budget_s: the epochs that fit, planned from steps timed on a copy of the model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import tocha
from tocha import config
from tocha.engine.step import Stepper
from tocha.errors import UserError
from tocha.harness.run import BUDGET_MARGIN, REPLAN_MARGIN, replanned_epochs
from tocha.harness.tune import CALIBRATION_STEPS, seconds_per_step

QUIET = {"threads": 1, "log": {"tensorboard": False, "progress": False}}


def _data(n: int = 600, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 2))


class _Batches:
    def __init__(self, x, y, size):
        self.x, self.y, self.size, self.epochs = x, y, size, []

    def set_epoch(self, epoch, first_batch=0):
        self.epochs.append(epoch)

    def __len__(self):
        return -(-len(self.y) // self.size)

    def __iter__(self):
        for i in range(0, len(self.y), self.size):
            yield self.x[i : i + self.size], self.y[i : i + self.size]


def _counting_stepper() -> tuple[Stepper, list[int]]:
    """A real stepper whose steps are counted (the micro-batches of each)."""
    model = _module()
    steps: list[int] = []
    stepper = Stepper(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        device=torch.device("cpu"),
        loss_fn=nn.functional.cross_entropy,
    )
    step = stepper.step
    stepper.step = lambda group, state: steps.append(len(group)) or step(group, state)
    return stepper, steps


def test_seconds_per_step_times_the_steps_after_the_warmup():
    x, y = _data(64 * 2 * (3 + CALIBRATION_STEPS + 5))
    batches = _Batches(x, y, 64)
    stepper, steps = _counting_stepper()
    seconds = seconds_per_step(stepper, batches, accum=2)
    assert seconds > 0
    assert len(steps) == 3 + CALIBRATION_STEPS and set(steps) == {2}  # warm-up + timed, 2 micro-batches each
    assert batches.epochs == [0]  # drawn as epoch 0 is


def test_an_epoch_shorter_than_the_calibration_is_timed_whole():
    x, y = _data(64 * 2)
    stepper, steps = _counting_stepper()
    assert seconds_per_step(stepper, _Batches(x, y, 64), accum=1) > 0
    assert len(steps) == 2  # one untimed, one timed


def test_a_budgeted_run_trains_exactly_as_the_planned_epochs_would():
    """The timing steps run on a copy with its own optimizer, and the RNGs (dropout, the sampler)
    are put back: the budgeted run and `epochs=N` give the same weights, bit for bit."""
    x, y = _data()
    budgeted = tocha.fit(_module(), (x, y), epochs=2, time_budget_s=1e6, batch_size=32, **QUIET)
    assert budgeted.summary["time_budget"]["epochs"] == 2
    plain = tocha.fit(_module(), (x, y), epochs=2, batch_size=32, **QUIET)
    for a, b in zip(budgeted.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_small_budget_cuts_the_epochs_and_the_run_folder_records_the_plan(tmp_path):
    x, y = _data()
    out = tmp_path / "run"
    result = tocha.fit(_module(), (x, y), epochs=50, time_budget_s=1e-6, batch_size=32, out=str(out), **QUIET)
    plan = json.loads((out / "summary.json").read_text())["time_budget"]
    assert plan["epochs"] == 1 and plan["max_epochs"] == 50 and plan["epoch_seconds_estimate"] > 0
    assert result.summary["epochs"] == 1
    saved = config.load(out / "config.yaml")
    assert (saved.epochs, saved.time_budget_s) == (1, 0.0)  # fed back, the file reruns the same run


def test_the_budget_is_validated_like_any_key():
    with pytest.raises(UserError, match="time_budget_s"):
        config.load(overrides=["time_budget_s=-1"])
    assert config.load(overrides=["time_budget_s=90"]).time_budget_s == 90.0


def test_tocha_train_plans_its_epochs_in_the_log(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tocha",
            "train",
            "model=mlp",
            "data=digits",
            "epochs=1000",
            "time_budget_s=0.5",
            "log.progress=false",
            f"out={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "time_budget_s=0.5: an epoch takes ~" in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    plan = summary["time_budget"]
    before = math.floor(0.5 / (plan["epoch_seconds_estimate"] * BUDGET_MARGIN))
    assert abs(plan.get("planned_before_training", plan["epochs"]) - before) <= 1  # summary.json rounds
    assert summary["epochs"] == plan["epochs"] < 1000
    _check_replans(plan, budget=0.5, max_epochs=1000)


def _check_replans(plan: dict, *, budget: float, max_epochs: int) -> None:
    """Each re-plan is the arithmetic its docstring gives, and the last one is what ran."""
    for r in plan.get("replans", []):
        mean = r["train_seconds"] / r["after_epoch"]
        fits = r["after_epoch"] + math.floor(max(0.0, budget - r["train_seconds"]) / (mean * REPLAN_MARGIN))
        assert abs(r["epochs"] - max(r["after_epoch"], min(max_epochs, fits))) <= 1  # summary.json rounds
    if plan.get("replans"):
        assert plan["epochs"] == plan["replans"][-1]["epochs"]
    planned = plan.get("planned_before_training", plan["epochs"])
    for r in plan.get("replans", []):
        assert r["epochs"] < planned or 2 * r["after_epoch"] <= planned  # grown only in the first half
        planned = r["epochs"]


def test_the_replan_rule_shrinks_on_an_overrun_and_grows_only_early():
    # 10 s epochs against a 100 s budget: 10 planned fit exactly, so nothing changes
    assert replanned_epochs(10.0, 1, 10, 100.0, 30) is None
    # 12 s epochs: 10 would take 120 s; 1 + floor(88 / 12.36) = 8
    assert replanned_epochs(12.0, 1, 10, 100.0, 30) == 8
    # 8 s epochs after 2: 2 + floor(84 / 8.24) = 12 fit, early in the run: grow
    assert replanned_epochs(16.0, 2, 10, 100.0, 30) == 12
    # the same speed past half the run: no growth (the learning rate has mostly decayed)
    assert replanned_epochs(48.0, 6, 10, 100.0, 30) is None
    # 11 s epochs: 9 take 99 s, within the budget though not with the margin: keep the plan
    assert replanned_epochs(11.0, 1, 9, 100.0, 30) is None
    # never fewer than the epochs done, never more than max_epochs
    assert replanned_epochs(120.0, 3, 10, 100.0, 30) == 3
    assert replanned_epochs(1.0, 1, 10, 100.0, 30) == 30


def test_a_resumed_budgeted_run_keeps_the_epochs_it_planned(tmp_path):
    """Resumed with the same options, the run does not plan again (a loaded machine would plan
    fewer epochs, and the schedule in the checkpoint is sized to the first plan)."""
    x, y = _data()
    out = str(tmp_path / "run")
    first = tocha.fit(_module(), (x, y), epochs=50, time_budget_s=1e-6, batch_size=32, out=out, **QUIET)
    again = tocha.fit(_module(), (x, y), epochs=50, time_budget_s=1e-6, batch_size=32, out=out, resume="auto", **QUIET)
    assert again.summary["time_budget"] == {"seconds": 1e-6, "epochs": 1, "max_epochs": 50, "resumed": True}
    assert again.summary["steps"] == first.summary["steps"]  # nothing more was trained


def _optimistic_timer(monkeypatch):
    """The steps timed before training say an epoch costs almost nothing: the first plan is every
    epoch allowed, and only the first epoch as it ran can correct it."""
    import tocha.harness.run as run

    monkeypatch.setattr(run, "seconds_per_step", lambda *a, **k: 1e-9)


def test_the_first_epoch_as_it_ran_replans_the_epochs_and_resizes_the_schedule(tmp_path, monkeypatch):
    _optimistic_timer(monkeypatch)
    x, y = _data(4000)
    out = tmp_path / "run"
    result = tocha.fit(_module(), (x, y), epochs=500, time_budget_s=1.0, batch_size=32, out=str(out), **QUIET)
    plan = result.summary["time_budget"]
    assert plan["planned_before_training"] == 500 and 1 <= plan["epochs"] < 500
    assert plan["replans"][0]["after_epoch"] == 1  # the first epoch showed the 500 would overrun
    _check_replans(plan, budget=1.0, max_epochs=500)
    assert result.summary["epochs"] == plan["epochs"] == config.load(out / "config.yaml").epochs
    lrs = [r["lr"] for r in result.history if r["kind"] == "train"]
    assert lrs[-1] < max(lrs) / 10  # one-cycle re-sized to the new length: it ends near zero, not part-way up


def test_the_resized_schedule_is_the_one_a_run_of_that_length_has(tmp_path):
    """After `done` steps, the fast-forwarded schedule gives the learning rate a schedule built for
    the new length from the start gives at that step."""
    from tocha.engine.optim import build_scheduler

    def lr_after(total: int, done: int, fast_forward: bool) -> float:
        model = _module()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        sched = build_scheduler(opt, "onecycle", total_steps=400, steps_per_epoch=40)
        for _ in range(done):
            opt.step()
            sched.step()
        if fast_forward:  # what TrainingRun.make_scheduler does after a replan
            sched = build_scheduler(opt, "onecycle", total_steps=total, steps_per_epoch=40)
            sched.last_epoch = done - 1
            sched.step()
        else:
            fresh = torch.optim.AdamW(_module().parameters(), lr=0.01)
            sched = build_scheduler(fresh, "onecycle", total_steps=total, steps_per_epoch=40)
            for _ in range(done):
                fresh.step()
                sched.step()
            opt = fresh
        return opt.param_groups[0]["lr"]

    for total in (120, 200, 800):
        assert lr_after(total, 40, True) == pytest.approx(lr_after(total, 40, False), rel=1e-9)


def test_a_replanned_run_stopped_and_resumed_keeps_the_new_plan(tmp_path, monkeypatch):
    _optimistic_timer(monkeypatch)
    x, y = _data(4000)
    out = str(tmp_path / "run")

    class StopAtEpoch2:
        def on_eval_end(self, record, improved):
            if record.get("epoch", 0) >= 2:
                raise tocha.StopTraining("enough")

    first = tocha.fit(
        _module(), (x, y), epochs=500, time_budget_s=5.0, batch_size=32, out=out, callbacks=[StopAtEpoch2()], **QUIET
    )
    planned = first.summary["time_budget"]["epochs"]
    if planned <= 2:
        pytest.skip(f"this machine fits only {planned} epochs of the test run in 5 s")
    again = tocha.fit(_module(), (x, y), epochs=500, time_budget_s=5.0, batch_size=32, out=out, resume="auto", **QUIET)
    assert again.summary["time_budget"]["resumed"] and again.summary["epochs"] == planned
    assert len([r for r in again.history if r["kind"] == "eval"]) == planned
