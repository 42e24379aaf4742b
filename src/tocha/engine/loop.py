"""The one training loop. The step is on one screen: `train_loop` below.

A task supplies `loss_fn(logits, y)` and an `evaluate()` that returns a dict of metrics; it never
brings its own loop. Nothing in the step reads a value back to the host: the running loss and
correct count stay on the device and are read once per `log_every` optimizer steps.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tocha.engine.distributed import DistInfo, all_reduce_sum
from tocha.engine.progress import Progress

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoopResult:
    history: tuple[dict, ...]     # every log and eval record, in order
    best: dict | None             # {"metric", "value", "epoch", "step"} of the best eval
    steps: int                    # optimizer steps taken
    train_samples: int            # samples seen by this process
    train_seconds: float          # time in training steps (evaluation excluded)
    wall_seconds: float


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def train_loop(
    model: nn.Module,
    train,                                   # ResidentBatches | LoaderBatches: yields (x, y) on `device`
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scheduler,                               # stepped every optimizer step; None = constant lr
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    precision: str = "fp32",
    grad_accum_steps: int = 1,
    grad_clip: float | None = None,
    log_every: int = 50,
    eval_every_steps: int = 0,
    evaluate: Callable[[], dict] | None = None,
    monitor: str = "val.accuracy",
    mode: str = "max",
    on_log: Callable[[dict], None] | None = None,
    on_eval_end: Callable[[dict, bool], None] | None = None,
    progress: Progress | None = None,
    dist: DistInfo = DistInfo(),
) -> LoopResult:
    amp_dtype = AMP_DTYPES[precision]
    # Loss scaling only for fp16; otherwise the step calls the optimizer directly.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    history: list[dict] = []
    best: dict | None = None
    step, samples_total, train_seconds = 0, 0, 0.0
    start = time.perf_counter()

    # Device-side accumulators since the last evaluation; read only at log/eval time.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    log_clock, log_seen = time.perf_counter(), 0

    def read_running() -> dict:
        totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)])
        loss_total, correct_total, count = all_reduce_sum(totals, dist).tolist()  # the one host sync
        count = max(count, 1.0)
        return {"train.loss": loss_total / count, "train.accuracy": correct_total / count,
                "lr": optimizer.param_groups[0]["lr"]}

    def run_eval(epoch_float: float, **extra) -> dict:
        nonlocal best, seen
        record = {"kind": "eval", "step": step, "epoch": round(epoch_float, 4), **read_running(), **extra}
        if evaluate is not None:
            model.eval()
            record.update(evaluate())
            model.train()
        value = record.get(monitor)
        improved = value is not None and is_better(value, None if best is None else best["value"], mode)
        if improved:
            best = {"metric": monitor, "value": value, "epoch": record["epoch"], "step": step}
        history.append(record)
        if on_eval_end is not None:
            on_eval_end(record, improved)
        loss_sum.zero_(), correct.zero_()
        seen = 0
        return record

    model.train()
    for epoch in range(epochs):
        train.set_epoch(epoch)
        n_micro = len(train)
        if progress:
            progress.start_epoch(epoch)
        epoch_clock = time.perf_counter()
        eval_seconds = 0.0
        for i, (x, y) in enumerate(train):
            # The last accumulation group of an epoch may be short: divide by its real size.
            group_start = i - i % grad_accum_steps
            group_size = min(grad_accum_steps, n_micro - group_start)

            with autocast:
                logits = model(x)
                loss = loss_fn(logits, y)
            scaled = loss / group_size if group_size > 1 else loss
            (scaler.scale(scaled) if scaler else scaled).backward()

            batch = y.shape[0]  # host metadata: no sync
            loss_sum.add_(loss.detach(), alpha=batch)
            correct.add_((logits.detach().argmax(1) == y).sum())
            seen += batch

            if i - group_start + 1 < group_size:
                continue  # keep accumulating gradients
            if grad_clip is not None:
                if scaler:
                    scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            if progress:
                progress.advance(group_size)

            if step % log_every == 0 and (on_log or progress):
                record = {"kind": "train", "step": step, "epoch": round(epoch + (i + 1) / n_micro, 4),
                          **read_running()}
                now = time.perf_counter()
                record["samples_per_second"] = (samples_total + seen - log_seen) * dist.world_size / (now - log_clock)
                log_clock, log_seen = now, samples_total + seen
                history.append(record)
                if on_log:
                    on_log(record)
                if progress:
                    progress.log(record)
            if eval_every_steps and step % eval_every_steps == 0 and i + 1 < n_micro:
                samples_total += seen
                t = time.perf_counter()
                run_eval(epoch + (i + 1) / n_micro)
                eval_seconds += time.perf_counter() - t
                log_clock, log_seen = time.perf_counter(), samples_total

        samples_total += seen
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock must not stop before the queued work has run
        epoch_seconds = time.perf_counter() - epoch_clock - eval_seconds
        train_seconds += epoch_seconds
        wait = getattr(train, "wait_seconds", 0.0)
        record = run_eval(epoch + 1, samples_per_second=samples_total * dist.world_size / max(train_seconds, 1e-9),
                          train_seconds=round(train_seconds, 4), data_wait_seconds=round(wait, 4),
                          data_wait_share=round(wait / max(epoch_seconds, 1e-9), 4))
        if progress:
            progress.end_epoch(epoch, record, time.perf_counter() - epoch_clock)
        log_clock, log_seen = time.perf_counter(), samples_total
    if progress:
        progress.close()
    return LoopResult(tuple(history), best, step, samples_total, train_seconds, time.perf_counter() - start)


@torch.inference_mode()
def predict_batches(model: nn.Module, batches, *, device: torch.device, precision: str = "fp32",
                    loss_fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Run `model` over `batches`; return (probabilities [N, K] float32 on CPU, labels [N] on CPU, mean loss).

    Everything stays on the device until one copy at the end.
    """
    amp_dtype = AMP_DTYPES[precision]
    was_training = model.training
    model.eval()
    probs, labels = [], []
    loss_sum = torch.zeros((), device=device)
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y) * y.shape[0]
        probs.append(logits.softmax(dim=1))
        labels.append(y)
    model.train(was_training)
    if not probs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), None
    all_probs, all_labels = torch.cat(probs).cpu(), torch.cat(labels).cpu()
    mean_loss = loss_sum.item() / max(len(all_labels), 1) if loss_fn is not None else None
    return all_probs, all_labels, mean_loss
