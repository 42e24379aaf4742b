"""Every schedule works for any run length, and impossible ones are refused before a run starts."""

import math

import pytest
import torch

from tocha.engine.optim import (
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    check_schedule,
)
from tocha.errors import UserError


def _optimizer(name: str) -> torch.optim.Optimizer:
    model = torch.nn.Linear(3, 2)
    return build_optimizer(model, name, lr=0.1, momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("total_steps", range(1, 13))
def test_every_schedule_steps_through_any_run_length(name, total_steps, optimizer):
    for warmup_steps in sorted({0, 0 if name == "onecycle" else total_steps // 2}):
        check_schedule(name, total_steps=total_steps, warmup_steps=warmup_steps)
        opt = _optimizer(optimizer)
        scheduler = build_scheduler(
            opt, name, total_steps=total_steps, steps_per_epoch=max(1, total_steps // 3), warmup_steps=warmup_steps
        )
        lrs = [g["lr"] for g in opt.param_groups]
        for _ in range(total_steps):
            opt.step()
            if scheduler is not None:
                scheduler.step()
            lrs += [g["lr"] for g in opt.param_groups]
        assert all(math.isfinite(lr) and lr >= 0 for lr in lrs), lrs


def test_onecycle_of_four_steps_still_warms_up_then_anneals():
    opt = _optimizer("sgd")
    scheduler = build_scheduler(opt, "onecycle", total_steps=4, steps_per_epoch=2)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        opt.step()
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1) and lrs[0] < 0.1 and lrs[-1] < 0.1


def test_onecycle_is_unchanged_where_it_already_worked():
    opt = _optimizer("sgd")
    scheduler = build_scheduler(opt, "onecycle", total_steps=100, steps_per_epoch=10)
    assert scheduler.total_steps == 100 and scheduler._schedule_phases[0]["end_step"] == 24


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(name="cosine", total_steps=10, warmup_steps=10), "warm-up"),
        (dict(name="none", total_steps=10, warmup_steps=11), "warm-up"),
        (dict(name="cosine", total_steps=0), "total_steps"),
        (dict(name="cosine", total_steps=10, warmup_steps=-1), "warmup"),
        (dict(name="onecycle", total_steps=10, warmup_steps=3), "onecycle"),
        (dict(name="step", total_steps=10, steps_per_epoch=0), "steps_per_epoch"),
        (dict(name="step", total_steps=10, step_epochs=0), "step_epochs"),
        (dict(name="cosnie", total_steps=10), "did you mean 'cosine'"),
    ],
)
def test_impossible_schedules_are_user_errors(kwargs, needle):
    with pytest.raises(UserError) as info:
        check_schedule(**kwargs)
    assert needle in str(info.value)


def test_check_schedule_is_quiet_for_a_normal_run():
    assert check_schedule("onecycle", total_steps=1000, warmup_steps=0, steps_per_epoch=100) == ()
    assert check_schedule("cosine", total_steps=1000, warmup_steps=100, steps_per_epoch=100) == ()
