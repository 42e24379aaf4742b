"""The training step, from a group of micro-batches to one optimizer step. Read it top to bottom.

A task supplies `loss_fn(logits, y)` (a mean over the batch) and optionally
`correct_fn(logits, y) -> (hits, targets scored)` for the running train accuracy. Nothing here
reads a value back to the host: the running sums stay on the device (STYLE habit 1).

Accumulation weights samples, not micro-batches: with several micro-batches each loss is
multiplied by its batch size and the summed gradient divided by the group's samples, so batch
32 x 4 steps equals batch 128 even when the epoch's last group is short (32, 32, 32, 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from tocha.engine.state import LoopState

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def top1_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Correct top-1 predictions and how many targets were scored; logits [..., K] against labels [...]."""
    return (logits.argmax(-1) == y).sum(), y.numel()


class Stepper:
    """Holds what every step uses; `step(group, state)` is the step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        *,
        device: torch.device,
        loss_fn: Callable,
        correct_fn: Callable | None = top1_correct,
        precision: str = "fp32",
        grad_clip: float | None = None,
        skip_nonfinite: bool = False,
        ema=None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loss_fn, self.correct_fn = loss_fn, correct_fn
        self.grad_clip, self.skip_nonfinite = grad_clip, skip_nonfinite
        self.ema = ema  # tocha.engine.ema.WeightEMA: the averaged copy that evaluation uses, or None
        amp_dtype = AMP_DTYPES[precision]
        self.autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        # Loss scaling only for fp16; disabled, the scaler passes everything through (nanoGPT's way).
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.no_sync = getattr(model, "no_sync", None)  # DDP: no gradient all-reduce while accumulating
        self.params = [p for p in model.parameters()]

    def step(self, group: Sequence[tuple[torch.Tensor, object]], state: LoopState) -> int:
        """Forward, loss and backward for each micro-batch, then clip and step; returns this rank's
        samples. 0: every micro-batch was skipped (non-finite), nothing stepped, no step to count."""
        summed = len(group) > 1
        samples = 0
        for k, (x, y) in enumerate(group):
            # no_sync must hold over forward and backward: DDP decides in forward whether backward all-reduces.
            with self.no_sync() if self.no_sync and k < len(group) - 1 else nullcontext():
                with self.autocast:
                    logits = self.model(x)
                    loss = self.loss_fn(logits, y)
                if self.skip_nonfinite and not bool(torch.isfinite(loss)):  # a host sync, the price of skipping
                    state.skipped_steps += 1
                    continue
                batch = x.shape[0]  # host metadata: no sync
                self.scaler.scale(loss * batch if summed else loss).backward()
            state.loss_sum.add_(loss.detach(), alpha=batch)
            if self.correct_fn is not None:
                hits, n_scored = self.correct_fn(logits.detach(), y)
                state.correct.add_(hits)
                state.scored += n_scored
            state.seen += batch
            samples += batch
        if samples == 0:
            self.optimizer.zero_grad(set_to_none=True)
            return 0
        if summed:
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_div_(grads, float(samples))
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return samples
