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
from tocha.harness.run import BUDGET_MARGIN
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


def test_seconds_per_step_times_the_steps_after_the_warmup():
    x, y = _data(64 * 2 * (3 + CALIBRATION_STEPS + 5))
    batches = _Batches(x, y, 64)
    model = _module()
    steps = []
    stepper = Stepper(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        device=torch.device("cpu"),
        loss_fn=nn.functional.cross_entropy,
    )
    step = stepper.step
    stepper.step = lambda group, state: steps.append(len(group)) or step(group, state)
    seconds = seconds_per_step(stepper, batches, accum=2)
    assert seconds > 0
    assert len(steps) == 3 + CALIBRATION_STEPS and set(steps) == {2}  # warm-up + timed, 2 micro-batches each
    assert batches.epochs == [0]  # drawn as epoch 0 is


def test_an_epoch_shorter_than_the_calibration_is_timed_whole():
    x, y = _data(64 * 2)
    model = _module()
    steps = []
    stepper = Stepper(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        device=torch.device("cpu"),
        loss_fn=nn.functional.cross_entropy,
    )
    step = stepper.step
    stepper.step = lambda group, state: steps.append(len(group)) or step(group, state)
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
    fits = math.floor(0.5 / (plan["epoch_seconds_estimate"] * BUDGET_MARGIN))
    assert summary["epochs"] == plan["epochs"] < 1000
    assert abs(plan["epochs"] - fits) <= 1  # the estimate in summary.json is rounded


def test_a_resumed_budgeted_run_keeps_the_epochs_it_planned(tmp_path):
    """Resumed with the same options, the run does not plan again (a loaded machine would plan
    fewer epochs, and the schedule in the checkpoint is sized to the first plan)."""
    x, y = _data()
    out = str(tmp_path / "run")
    first = tocha.fit(_module(), (x, y), epochs=50, time_budget_s=1e-6, batch_size=32, out=out, **QUIET)
    again = tocha.fit(_module(), (x, y), epochs=50, time_budget_s=1e-6, batch_size=32, out=out, resume="auto", **QUIET)
    assert again.summary["time_budget"] == {"seconds": 1e-6, "epochs": 1, "max_epochs": 50, "resumed": True}
    assert again.summary["steps"] == first.summary["steps"]  # nothing more was trained
