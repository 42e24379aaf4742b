"""Optimizer and learning-rate schedule builders (plain arguments, no config object)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(model: nn.Module, name: str, *, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0, fused: bool | None = None,
                    lr_of: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """`lr_of` (parameter name -> learning rate) gives discriminative rates; it also brings frozen parameters
    in, so that they train once unfrozen (until then they have no gradient and the optimizer skips them)."""
    if lr_of is not None:
        by_rate: dict[float, list[tuple[str, nn.Parameter]]] = {}
        for n, p in model.named_parameters():
            by_rate.setdefault(lr_of(n), []).append((n, p))
        groups = [{"params": [p for _, p in named if (p.ndim > 1) == matrix], "lr": rate,
                   "weight_decay": weight_decay if matrix else 0.0}
                  for rate, named in by_rate.items() for matrix in (True, False)]
        groups = [g for g in groups if g["params"]]
    # Decay only weight matrices/kernels: decaying biases and norm scales hurts and helps nothing.
    elif weight_decay:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:  # one group: each group is a separate multi-tensor kernel launch per step
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, *, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0, step_epochs: int = 1, step_gamma: float = 0.1):
    """A schedule stepped once per optimizer step; None for a constant learning rate (nothing to step)."""
    if name == "none" and warmup_steps == 0:
        return None
    if name == "onecycle":
        has_momentum = any(g.get("momentum", 0) > 0 for g in optimizer.param_groups) or "betas" in optimizer.defaults
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 2),
            pct_start=0.25, cycle_momentum=has_momentum)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if name == "step":
            return step_gamma ** (step // (step_epochs * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
