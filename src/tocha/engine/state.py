"""Where a training run stands: one typed value that is also the checkpoint position.

Every field is what the loop needs to continue bit for bit. `batch` counts micro-batches of the
epoch; as `batch_size` is the global batch, batch i covers the same samples of the epoch's order
on any number of ranks, so a position written by N ranks continues on M.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class LoopState:
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # the next micro-batch of that epoch
    step: int = 0  # optimizer steps taken
    samples_total: int = 0  # samples seen by all ranks together
    train_seconds: float = 0.0  # time in training steps, evaluation excluded
    history: list[dict] = field(default_factory=list)  # every log and eval record, in order
    best: dict | None = None  # {"metric", "value", "epoch", "step"} of the best evaluation
    stale_evals: int = 0  # evaluations since the monitored metric last improved by min_delta
    skipped_steps: int = 0  # micro-batches skipped for a non-finite loss
    scaler: dict | None = None  # the fp16 GradScaler's state
    planned_epochs: int = 0  # time_budget_s: the epochs the schedule is sized to (0: no budget, the config's)
    # Running sums since the last evaluation, summed over ranks when written.
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    seen: int = 0  # samples since the last evaluation (the loss is a mean per sample)
    scored: int = 0  # targets scored for accuracy (samples, or tokens for a language model)
    # [loss sum, correct, samples, scored] over all ranks at the last log read: the train curve is the
    # mean over each log interval, also across a resume.
    interval: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def to_position(self) -> dict:
        """The checkpoint's `position`: plain values and CPU tensors (the format resume.FORMAT reads)."""
        out = dataclasses.asdict(self)
        out["loss_sum"], out["correct"] = self.loss_sum.detach().cpu(), self.correct.detach().cpu()
        out["history"] = list(self.history)
        return out

    @classmethod
    def from_position(cls, position: dict | None) -> LoopState:
        if not position:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in position.items() if k in known}
        values.setdefault("scored", values.get("seen", 0))
        return cls(**values)
