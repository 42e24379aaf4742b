"""Optimizer and learning-rate schedule builders (plain arguments, no config object)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    fused: bool | None = None,
    lr_of: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """`lr_of` (parameter name -> learning rate) gives discriminative rates; it also brings frozen parameters
    in, so that they train once unfrozen (until then they have no gradient and the optimizer skips them)."""
    if lr_of is not None:
        by_rate: dict[float, list[tuple[str, nn.Parameter]]] = {}
        for n, p in model.named_parameters():
            by_rate.setdefault(lr_of(n), []).append((n, p))
        groups = [
            {
                "params": [p for _, p in named if (p.ndim > 1) == matrix],
                "lr": rate,
                "weight_decay": weight_decay if matrix else 0.0,
            }
            for rate, named in by_rate.items()
            for matrix in (True, False)
        ]
        groups = [g for g in groups if g["params"]]
    # Decay only weight matrices/kernels: decaying biases and norm scales hurts and helps nothing.
    elif weight_decay:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:  # one group: each group is a separate multi-tensor kernel launch per step
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "adam":  # L2 weight decay through the gradient, as users of torch.optim.Adam expect
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}")


SCHEDULERS = ("none", "cosine", "onecycle", "step")
ONECYCLE_PCT_START = 0.25


def _onecycle_pct_start(total_steps: int) -> tuple[float, str | None]:
    """OneCycleLR's warm-up share, and a note when it had to change.

    OneCycleLR ends its warm-up phase at step pct_start * total_steps - 1 and divides by that phase's
    length: when pct_start * total_steps is exactly 1 (4 steps at 0.25) the phase has length 0 and the
    first step divides by zero. Two warm-up steps are then used instead."""
    if math.isclose(ONECYCLE_PCT_START * total_steps, 1.0):
        pct_start = 2 / total_steps
        return pct_start, (
            f"scheduler=onecycle over {total_steps} steps: warm-up of 2 steps "
            f"(pct_start {pct_start:g} instead of {ONECYCLE_PCT_START:g}, which leaves OneCycleLR a "
            "warm-up phase of zero length)"
        )
    return ONECYCLE_PCT_START, None


def check_schedule(
    name: str, total_steps: int, warmup_steps: int = 0, *, steps_per_epoch: int = 1, step_epochs: int = 1
) -> tuple[str, ...]:
    """Refuse a schedule that cannot work, before anything is written; returns notes for the log.

    Call it with the real optimizer-step counts of the run (after the data is loaded, before the run
    folder exists); `build_scheduler` with the same arguments then builds a schedule that steps
    `total_steps` times with finite learning rates. Raises UserError naming the config keys."""
    from tocha.errors import UserError, did_you_mean

    if name not in SCHEDULERS:
        raise UserError(
            f"unknown scheduler '{name}'",
            where="config key scheduler",
            allowed=", ".join(SCHEDULERS),
            fix=did_you_mean(name, SCHEDULERS) or None,
        )
    if total_steps < 1:
        raise UserError(
            f"the run has no optimizer steps (total_steps={total_steps})",
            where="config keys epochs, batch_size, grad_accum_steps",
            fix="use more epochs, a smaller batch_size or grad_accum_steps, or more data",
        )
    if steps_per_epoch < 1:
        raise UserError(
            f"an epoch has no optimizer steps (steps_per_epoch={steps_per_epoch})",
            where="config keys batch_size, grad_accum_steps",
            fix="use a smaller batch_size or grad_accum_steps, or more data",
        )
    if warmup_steps < 0:
        raise UserError(
            f"the warmup cannot be negative (warmup_steps={warmup_steps})",
            where="config key warmup_epochs",
            fix="use warmup_epochs=0 or more",
        )
    if name == "onecycle" and warmup_steps > 0:
        raise UserError(
            "warmup_epochs does nothing with scheduler=onecycle (it has its own warm-up phase)",
            where="config keys warmup_epochs, scheduler",
            fix="drop warmup_epochs, or use scheduler=cosine (or none, step) with it",
        )
    if warmup_steps and warmup_steps >= total_steps:
        raise UserError(
            f"the warm-up ({warmup_steps} optimizer steps) is as long as the whole run or longer ({total_steps} steps)",
            where="config keys warmup_epochs, epochs",
            fix="use a smaller warmup_epochs, or more epochs",
        )
    if name == "step" and step_epochs < 1:
        raise UserError(
            f"step_epochs={step_epochs}: the lr would drop every 0 epochs",
            where="config key step_epochs",
            fix="use step_epochs=1 or more",
        )
    notes = []
    if name == "onecycle":
        notes.append(_onecycle_pct_start(total_steps)[1])
    if name == "step" and step_epochs * steps_per_epoch >= total_steps:
        notes.append(
            f"scheduler=step: the first lr drop (after {step_epochs} epoch(s)) comes after the last step; "
            "the learning rate stays constant"
        )
    return tuple(n for n in notes if n)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    step_epochs: int = 1,
    step_gamma: float = 0.1,
):
    """A schedule stepped once per optimizer step; None for a constant learning rate (nothing to step).

    Works for any total_steps >= 1 (see `check_schedule` for the combinations it refuses)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    if name == "none" and warmup_steps == 0:
        return None
    if name == "onecycle":
        has_momentum = any(g.get("momentum", 0) > 0 for g in optimizer.param_groups) or "betas" in optimizer.defaults
        total = max(total_steps, 2)  # OneCycleLR needs two points (start and end) to draw a cycle
        pct_start, note = _onecycle_pct_start(total)
        if note:
            log.info(note)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            # An optimizer that already had a one-cycle schedule (re-sized by time_budget_s) keeps its peak.
            max_lr=[g.get("max_lr", g["lr"]) for g in optimizer.param_groups],
            total_steps=total,
            pct_start=pct_start,
            cycle_momentum=has_momentum,
        )
    drop_every = max(1, step_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if name == "step":
            return step_gamma ** (step // drop_every)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
