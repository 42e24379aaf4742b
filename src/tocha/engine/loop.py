"""The one training loop. The step is on one screen: `train_loop` below.

A task supplies `loss_fn(logits, y)`, optionally `correct_fn(logits, y)` for the running train
accuracy, and an `evaluate()` that returns a dict of metrics; it never brings its own loop. `y` is
whatever the task's batches carry (labels, next-character targets, labels with teacher logits).
Nothing in the step reads a value back to the host: the running loss and correct count stay on
the device and are read once per `log_every` optimizer steps.

On several processes `model` is the DistributedDataParallel wrapper: gradients are averaged in
backward, except on micro-batches that only accumulate (`no_sync`); the running sums are
all-reduced at log time only, together with any pending stop signal, so every rank stops alike.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tocha.engine.distributed import DistInfo, agree_max, all_reduce_sum
from tocha.engine.progress import Progress

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoopResult:
    history: tuple[dict, ...]     # every log and eval record, in order
    best: dict | None             # {"metric", "value", "epoch", "step"} of the best eval
    steps: int                    # optimizer steps taken
    train_samples: int            # samples seen by all processes together
    train_seconds: float          # time in training steps (evaluation excluded)
    wall_seconds: float
    stopped_early: str | None = None   # why early stopping ended the run, if it did
    skipped_steps: int = 0        # batches skipped for a non-finite loss (on_nonfinite=skip)


def top1_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Correct top-1 predictions and how many targets were scored; logits [..., K] against labels [...]."""
    return (logits.argmax(-1) == y).sum(), y.numel()


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


class NonFiniteLoss(Exception):
    """The running loss turned NaN/Inf; `step` is where it was seen, `last_good` the last finite read."""

    def __init__(self, step: int, last_good: int) -> None:
        super().__init__(f"non-finite loss by step {step}")
        self.step, self.last_good = step, last_good


class StopRequested(Exception):
    """A stop signal arrived; the loop finished its step and handed a checkpoint to `on_checkpoint`."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"signal {signum} at step {step}")
        self.signum, self.step = signum, step


def train_loop(
    model: nn.Module,
    train,                                   # ResidentBatches | LoaderBatches: yields (x, y) on `device`
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scheduler,                               # stepped every optimizer step; None = constant lr
    epochs: int,
    loss_fn: Callable[[torch.Tensor, object], torch.Tensor],
    correct_fn: Callable[[torch.Tensor, object], tuple[torch.Tensor, int]] = top1_correct,
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
    start: dict | None = None,               # a `position` from a checkpoint: continue exactly there
    checkpoint_every: int = 0,               # optimizer steps between mid-epoch checkpoints (0 = none)
    on_checkpoint: Callable[[dict], None] | None = None,   # gets `position`; also called at every epoch end
    stop_signal: Callable[[], int | None] | None = None,   # a pending stop signal, checked after each step
    patience: int = 0,
    min_delta: float = 0.0,
    skip_nonfinite: bool = False,
) -> LoopResult:
    amp_dtype = AMP_DTYPES[precision]
    # Loss scaling only for fp16; otherwise the step calls the optimizer directly.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    start = start or {}
    history: list[dict] = list(start.get("history", []))
    best: dict | None = start.get("best")
    step, samples_total = start.get("step", 0), start.get("samples_total", 0)
    train_seconds = start.get("train_seconds", 0.0)
    stale_evals, skipped = start.get("stale_evals", 0), start.get("skipped_steps", 0)
    last_finite = step
    wall_start = time.perf_counter()

    # Device-side accumulators since the last evaluation; read only at log/eval time. A checkpoint
    # holds their totals over all ranks: rank 0 carries them on, the others start from zero.
    carried = start if dist.is_main else {}
    loss_sum = carried.get("loss_sum", torch.zeros(())).to(device)
    correct = carried.get("correct", torch.zeros((), dtype=torch.long)).to(device)
    seen = carried.get("seen", 0)           # samples since the last evaluation (the loss is a mean per sample)
    scored = carried.get("scored", seen)    # targets scored for accuracy (samples, or tokens for a language model)
    no_sync = getattr(model, "no_sync", None)   # DDP: skip the gradient all-reduce while accumulating
    if scaler is not None and start.get("scaler"):
        scaler.load_state_dict(start["scaler"])
    log_clock, log_seen = time.perf_counter(), samples_total

    def running_totals(dtype: torch.dtype = torch.float32) -> list[float]:
        """[loss sum, correct, samples, scored targets] since the last evaluation, summed over ranks (a host sync)."""
        counts = torch.tensor([float(seen), float(scored)], device=device, dtype=dtype)
        return all_reduce_sum(torch.cat([torch.stack([loss_sum.to(dtype), correct.to(dtype)]), counts]), dist).tolist()

    def read_running() -> dict:
        nonlocal last_finite
        loss_total, correct_total, count, scored_total = running_totals()  # the one host sync
        if not math.isfinite(loss_total):
            raise NonFiniteLoss(step, last_finite)
        last_finite = step
        return {"train.loss": loss_total / max(count, 1.0), "train.accuracy": correct_total / max(scored_total, 1.0),
                "lr": optimizer.param_groups[0]["lr"]}

    def run_eval(epoch_float: float, **extra) -> dict:
        nonlocal best, seen, scored, stale_evals
        record = {"kind": "eval", "step": step, "epoch": round(epoch_float, 4), **read_running(), **extra}
        if evaluate is not None:
            model.eval()
            record.update(evaluate())
            model.train()
        value = record.get(monitor)
        previous = None if best is None else best["value"]
        improved = value is not None and is_better(value, previous, mode)
        # Patience counts evaluations that did not beat the best by more than min_delta.
        margin = value is not None and (previous is None or (value - previous if mode == "max" else previous - value)
                                        > min_delta)
        stale_evals = 0 if improved and margin else stale_evals + 1
        if improved:
            best = {"metric": monitor, "value": value, "epoch": record["epoch"], "step": step}
        if skipped:
            record["skipped_steps"] = skipped
        history.append(record)
        if on_eval_end is not None:
            on_eval_end(record, improved)
        loss_sum.zero_(), correct.zero_()
        seen = scored = 0
        return record

    def position(epoch: int, next_batch: int, seconds: float) -> dict:
        """Everything the loop needs to continue from here, bit for bit.

        `batch` counts micro-batches of the epoch; as `batch_size` is the global batch, batch i
        covers the same samples of the epoch's order on any number of ranks, so a checkpoint
        written by N ranks continues on M. Called on every rank (the running sums are all-reduced).
        """
        totals = running_totals(torch.float64) if dist.world_size > 1 else None
        # Never checkpoint a diverged run. On one process a local check (no sync beyond this read); on
        # several, the check reads the all-reduced sum, so every rank reaches the same verdict.
        if not (bool(torch.isfinite(loss_sum)) if totals is None else math.isfinite(totals[0])):
            raise NonFiniteLoss(step, last_finite)
        return {"epoch": epoch, "batch": next_batch, "step": step, "samples_total": samples_total,
                "train_seconds": seconds,
                "loss_sum": (loss_sum.detach().cpu() if totals is None
                             else torch.tensor(totals[0], dtype=loss_sum.dtype)),
                "correct": correct.detach().cpu() if totals is None else torch.tensor(int(totals[1])),
                "seen": seen if totals is None else int(totals[2]),
                "scored": scored if totals is None else int(totals[3]),
                "history": list(history), "best": best, "stale_evals": stale_evals,
                "skipped_steps": skipped, "scaler": scaler.state_dict() if scaler is not None else None}

    model.train()
    stopped_early: str | None = None
    for epoch in range(start.get("epoch", 0), epochs):
        first_batch = start.get("batch", 0) if epoch == start.get("epoch", 0) else 0
        train.set_epoch(epoch, first_batch)
        n_micro = len(train)
        if progress:
            progress.start_epoch(epoch, done=first_batch // grad_accum_steps)
        epoch_clock = time.perf_counter()
        eval_seconds = 0.0
        seen_at_epoch_start = samples_total
        for i, (x, y) in enumerate(train, start=first_batch):
            # The last accumulation group of an epoch may be short: divide by its real size.
            group_start = i - i % grad_accum_steps
            group_size = min(grad_accum_steps, n_micro - group_start)

            accumulating = i - group_start + 1 < group_size
            # no_sync must hold over forward and backward: DDP decides in forward whether backward all-reduces.
            with no_sync() if accumulating and no_sync is not None else nullcontext():
                with autocast:
                    logits = model(x)
                    loss = loss_fn(logits, y)
                if skip_nonfinite and not bool(torch.isfinite(loss)):  # a host sync, the price of skipping
                    skipped += 1
                else:
                    scaled = loss / group_size if group_size > 1 else loss
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    batch = x.shape[0]  # host metadata: no sync
                    loss_sum.add_(loss.detach(), alpha=batch)
                    hits, n_scored = correct_fn(logits.detach(), y)
                    correct.add_(hits)
                    seen += batch
                    scored += n_scored
                    samples_total += batch * dist.world_size  # every rank's batch has the same size

            if accumulating:
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

            # Every rank reads at the same steps: the read is a collective on several processes.
            if step % log_every == 0 and (on_log or progress or dist.world_size > 1):
                record = {"kind": "train", "step": step, "epoch": round(epoch + (i + 1) / n_micro, 4),
                          **read_running()}
                now = time.perf_counter()
                record["samples_per_second"] = (samples_total - log_seen) / (now - log_clock)
                log_clock, log_seen = now, samples_total
                history.append(record)
                if on_log:
                    on_log(record)
                if progress:
                    progress.log(record)
            if eval_every_steps and step % eval_every_steps == 0 and i + 1 < n_micro:
                t = time.perf_counter()
                run_eval(epoch + (i + 1) / n_micro)
                eval_seconds += time.perf_counter() - t
                log_clock, log_seen = time.perf_counter(), samples_total
            signum = stop_signal() if stop_signal else None
            if stop_signal and dist.world_size > 1:
                # Ranks must stop at the same step; agreeing is a collective, so only every log_every steps.
                signum = (agree_max(signum or 0, dist, device) or None) if step % log_every == 0 else None
            due = checkpoint_every and step % checkpoint_every == 0 and i + 1 < n_micro
            if on_checkpoint and (due or signum is not None):
                seconds = train_seconds + time.perf_counter() - epoch_clock - eval_seconds
                on_checkpoint(position(epoch, i + 1, seconds))
            if signum is not None:
                if progress:
                    progress.close()
                raise StopRequested(signum, step)

        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock must not stop before the queued work has run
        epoch_seconds = time.perf_counter() - epoch_clock - eval_seconds
        train_seconds += epoch_seconds
        wait = getattr(train, "wait_seconds", 0.0)
        record = run_eval(epoch + 1, samples_per_second=(samples_total - seen_at_epoch_start)
                          / max(epoch_seconds, 1e-9), train_seconds=round(train_seconds, 4),
                          data_wait_seconds=round(wait, 4), data_wait_share=round(wait / max(epoch_seconds, 1e-9), 4))
        if progress:
            progress.end_epoch(epoch, record, time.perf_counter() - epoch_clock)
        if patience and stale_evals >= patience and epoch + 1 < epochs:
            stopped_early = (f"stopped after epoch {epoch + 1}: {monitor} did not improve by more than {min_delta:g} "
                             f"in {patience} evaluation(s)")
        if on_checkpoint:
            on_checkpoint(position(epoch + 1, 0, train_seconds))
        log_clock, log_seen = time.perf_counter(), samples_total
        if stopped_early:
            break
    if progress:
        progress.close()
    return LoopResult(tuple(history), best, step, samples_total, train_seconds, time.perf_counter() - wall_start,
                      stopped_early, skipped)


@torch.inference_mode()
def predict_batches(model: nn.Module, batches, *, device: torch.device, precision: str = "fp32",
                    loss_fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run `model` over `batches`; return (probabilities [N, K] float32, labels [N], per-sample losses [N] or None).

    `loss_fn(logits, y)` must return one loss per sample (reduction="none"): per-sample values can be
    gathered across ranks and averaged exactly once each. Everything stays on the device until one
    copy to the CPU at the end.
    """
    amp_dtype = AMP_DTYPES[precision]
    was_training = model.training
    model.eval()
    probs, labels, losses = [], [], []
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            losses.append(loss_fn(logits, y).float())
        probs.append(logits.softmax(dim=1))
        labels.append(y)
    model.train(was_training)
    if not probs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), None
    per_sample = torch.cat(losses).cpu() if loss_fn is not None else None
    return torch.cat(probs).cpu(), torch.cat(labels).cpu(), per_sample
