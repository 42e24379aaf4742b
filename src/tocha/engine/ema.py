"""An exponential moving average of the weights, for evaluation and the saved best (airbench's EMA).

After every optimizer step `update()` moves each floating parameter of the copy towards the
trained one: ema = decay * ema + (1 - decay) * weight. Before `start_step` optimizer steps the copy
simply follows the weights (early weights are noise an average should not remember). Buffers
(BatchNorm running statistics, counters) are copied, not averaged: they already are averages.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.start_step, self.steps = decay, start_step, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.pairs = [(e, w) for e, w in zip(self.module.parameters(), model.parameters(), strict=True)]
        self.buffers = list(zip(self.module.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        """One call after each optimizer step."""
        self.steps += 1
        averaged = [e for e, _ in self.pairs]
        weights = [w.detach() for _, w in self.pairs]
        if self.steps <= self.start_step:
            torch._foreach_copy_(averaged, weights)
        else:
            torch._foreach_lerp_(averaged, weights, 1.0 - self.decay)
        for e, b in self.buffers:
            e.copy_(b)
