"""The driver around the step: epochs, cadence (log, evaluate, checkpoint), early stopping, signals.

The step itself is `Stepper.step` (engine/step.py). Three hook points, no more: `on_log(record)`
at each log read, `on_eval_end(record, improved)` after each evaluation, `on_checkpoint(state)`
where a checkpoint is due. A task's `evaluate()` returns a dict of metrics; it never brings its
own loop.

On several processes the stepped model is the DistributedDataParallel wrapper. The running sums
are all-reduced at log time only, together with any pending stop signal, so every rank stops alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tocha.engine.distributed import DistInfo, agree_max, all_reduce_sum
from tocha.engine.progress import Progress
from tocha.engine.state import LoopState
from tocha.engine.step import Stepper, top1_correct
from tocha.errors import UserError


@dataclass(frozen=True)
class Cadence:
    log_every: int = 50  # optimizer steps between reads of the running sums (one host sync each)
    eval_every_steps: int = 0  # 0: evaluate at epoch ends only
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)


@dataclass(frozen=True)
class Selection:
    monitor: str = "val.accuracy"
    mode: str = "max"
    patience: int = 0  # evaluations without improvement before stopping (0: never)
    min_delta: float = 0.0


@dataclass(frozen=True)
class Hooks:
    on_log: Callable[[dict], None] | None = None
    on_eval_end: Callable[[dict, bool], None] | None = None
    on_checkpoint: Callable[[LoopState], None] | None = None


@dataclass(frozen=True)
class LoopResult:
    history: tuple[dict, ...]
    best: dict | None
    steps: int
    train_samples: int
    train_seconds: float
    wall_seconds: float
    stopped_early: str | None = None
    skipped_steps: int = 0


class NonFiniteLoss(Exception):
    """The running loss turned NaN/Inf; `step` is where it was seen, `last_good` the last finite read."""

    def __init__(self, step: int, last_good: int) -> None:
        super().__init__(f"non-finite loss by step {step}")
        self.step, self.last_good = step, last_good


class StopTraining(Exception):  # noqa: N818 - named for what a callback asks, like Keras' stop_training
    """Raised by a hook (a user callback) to end the run cleanly: the driver finishes the hook's
    step, writes a checkpoint and returns with the message as the reason it stopped."""


class StopRequested(Exception):
    """A stop signal arrived; the loop finished its step and handed a checkpoint to `on_checkpoint`."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"signal {signum} at step {step}")
        self.signum, self.step = signum, step


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def groups(batches, first: int, accum: int) -> Iterator[tuple[int, list]]:
    """(index after the group, micro-batches) per optimizer step; the epoch's last group may be short."""
    group: list = []
    n = len(batches)
    for i, batch in enumerate(batches, start=first):
        group.append(batch)
        if len(group) == accum or i + 1 == n:
            yield i + 1, group
            group = []


class Driver:
    """Runs `stepper` over `train` for `epochs` from `state`; every rank calls it alike."""

    def __init__(
        self,
        stepper: Stepper,
        train,
        state: LoopState,
        *,
        epochs: int,
        device: torch.device,
        grad_accum_steps: int = 1,
        evaluate: Callable[[], dict] | None = None,
        cadence: Cadence = Cadence(),
        selection: Selection = Selection(),
        hooks: Hooks = Hooks(),
        progress: Progress | None = None,
        dist: DistInfo = DistInfo(),
        stop_signal: Callable[[], int | None] | None = None,
        max_steps: int = 0,
        replan: Callable[[float, int, int], int | None] | None = None,
    ) -> None:
        self.stepper, self.train, self.state, self.epochs, self.device = stepper, train, state, epochs, device
        # time_budget_s: called after each epoch, before it is evaluated and checkpointed, with the train
        # seconds so far, the epochs done and the optimizer steps taken; returns the run's new epoch
        # count (the caller re-sizes the schedule) or None.
        self.replan = replan
        self.accum, self.evaluate, self.cadence, self.selection = grad_accum_steps, evaluate, cadence, selection
        self.hooks, self.progress, self.dist, self.stop_signal = hooks, progress, dist, stop_signal
        self.last_finite = state.step
        self.max_steps = max_steps  # 0: no cap; otherwise the run ends (evaluated, checkpointed) at this step
        self.stop_reason: str | None = None  # set when a hook raised StopTraining
        # Per log interval (the train curve); the state's sums run until the next evaluation (its record).
        # The totals at the last log read live in the state, so a resumed run continues the same interval.
        # A checkpoint holds the running sums over all ranks: rank 0 carries them on, the others start at zero.
        if not dist.is_main:
            state.loss_sum, state.correct, state.seen, state.scored = (
                torch.zeros(()),
                torch.zeros((), dtype=torch.long),
                0,
                0,
            )
        state.loss_sum, state.correct = state.loss_sum.to(device), state.correct.to(device)
        if state.scaler:
            stepper.scaler.load_state_dict(state.scaler)

    # ------------------------------------------------------------------ reads (host syncs)
    def totals(self, dtype: torch.dtype = torch.float32) -> list[float]:
        """[loss sum, correct, samples, scored targets] since the last evaluation, over all ranks."""
        s = self.state
        counts = torch.tensor([float(s.seen), float(s.scored)], device=self.device, dtype=dtype)
        stacked = torch.cat([torch.stack([s.loss_sum.to(dtype), s.correct.to(dtype)]), counts])
        return all_reduce_sum(stacked, self.dist).tolist()

    def read_running(self, totals: list[float] | None = None) -> dict:
        """The train metrics of `totals` (default: since the last evaluation)."""
        loss_total, correct_total, count, scored_total = totals or self.totals()  # the one host sync
        if not math.isfinite(loss_total):
            raise NonFiniteLoss(self.state.step, self.last_finite)
        self.last_finite = self.state.step
        record = {"train.loss": loss_total / max(count, 1.0)}
        if self.stepper.correct_fn is not None:
            record["train.accuracy"] = correct_total / max(scored_total, 1.0)
        return {**record, "lr": self.stepper.optimizer.param_groups[0]["lr"]}

    def mark_interval(self, totals: list[float] | None = None) -> None:
        self.state.interval = list(totals) if totals is not None else [0.0, 0.0, 0.0, 0.0]

    def call(self, hook: Callable | None, *args) -> None:
        """A hook; StopTraining from it is remembered and honoured at the end of the step."""
        if hook is None:
            return
        try:
            hook(*args)
        except StopTraining as stop:
            self.stop_reason = self.stop_reason or (str(stop) or "a callback raised StopTraining")

    def checkpoint_state(self) -> LoopState:
        """The state to write, with the running sums of all ranks; never the state of a diverged run."""
        s = self.state
        s.scaler = self.stepper.scaler.state_dict() if self.stepper.scaler.is_enabled() else None
        if self.dist.world_size == 1:
            if not bool(torch.isfinite(s.loss_sum)):
                raise NonFiniteLoss(s.step, self.last_finite)
            return s
        loss_total, correct_total, seen, scored = self.totals(torch.float64)
        if not math.isfinite(loss_total):
            raise NonFiniteLoss(s.step, self.last_finite)
        return LoopState(
            **{
                **vars(s),
                "loss_sum": torch.tensor(loss_total, dtype=s.loss_sum.dtype),
                "correct": torch.tensor(int(correct_total)),
                "seen": int(seen),
                "scored": int(scored),
            }
        )

    # ------------------------------------------------------------------ evaluation and selection
    def run_eval(self, epoch_float: float, **extra) -> dict:
        s, sel = self.state, self.selection
        record = {"kind": "eval", "step": s.step, "epoch": round(epoch_float, 4), **self.read_running(), **extra}
        if self.evaluate is not None:
            model = self.stepper.model
            model.eval()
            record.update(self.evaluate())
            model.train()
        if sel.monitor not in record:
            produced = sorted(k for k in record if k.startswith(("val.", "train.")))
            raise UserError(
                f"monitor={sel.monitor} is not a metric this run produces",
                where="config key monitor",
                allowed=", ".join(produced),
                fix="choose one of the allowed names",
            )
        value = record[sel.monitor]
        previous = None if s.best is None else s.best["value"]
        improved = is_better(value, previous, sel.mode)
        # Patience counts evaluations that did not beat the best by more than min_delta.
        margin = previous is None or (value - previous if sel.mode == "max" else previous - value) > sel.min_delta
        s.stale_evals = 0 if improved and margin else s.stale_evals + 1
        if improved:
            s.best = {"metric": sel.monitor, "value": value, "epoch": record["epoch"], "step": s.step}
        if s.skipped_steps:
            record["skipped_steps"] = s.skipped_steps
        s.history.append(record)
        s.loss_sum.zero_(), s.correct.zero_()
        s.seen = s.scored = 0
        self.mark_interval()
        self.call(self.hooks.on_eval_end, record, improved)
        return record

    def checkpoint(self) -> None:
        if self.hooks.on_checkpoint is not None:
            self.call(self.hooks.on_checkpoint, self.checkpoint_state())

    # ------------------------------------------------------------------ the loop
    def run(self) -> LoopResult:
        s = self.state
        wall_start = time.perf_counter()
        self.stepper.model.train()
        stopped_early = None
        epoch, first = s.epoch, s.batch
        while epoch < self.epochs:  # self.epochs can change after the first epoch (replan)
            if self.max_steps and s.step >= self.max_steps:  # a resumed run that had reached its cap
                break
            s.epoch, s.batch = epoch, first
            stopped_early = self.run_epoch(epoch, first)
            if stopped_early:
                break
            epoch, first = epoch + 1, 0
        if self.progress:
            self.progress.close()
        return LoopResult(
            tuple(s.history),
            s.best,
            s.step,
            s.samples_total,
            s.train_seconds,
            time.perf_counter() - wall_start,
            stopped_early,
            s.skipped_steps,
        )

    def run_epoch(self, epoch: int, first: int) -> str | None:
        s, cad, train = self.state, self.cadence, self.train
        train.set_epoch(epoch, first)
        n_micro = len(train)
        if self.progress:
            self.progress.start_epoch(epoch, done=first)
        clock = time.perf_counter()
        eval_seconds, seen_at_start, seconds_at_start = 0.0, s.samples_total, s.train_seconds
        log_clock, log_seen = clock, s.samples_total
        for next_batch, group in groups(train, first, self.accum):
            samples = self.stepper.step(group, s)
            s.batch = next_batch
            s.samples_total += samples * self.dist.world_size  # every rank's batch has the same size
            if self.progress:
                self.progress.advance(len(group))
            if not samples:
                continue  # every micro-batch skipped: no optimizer step to count
            s.step += 1
            mid_epoch = next_batch < n_micro
            # Every rank reads at the same steps: the read is a collective on several processes.
            if s.step % cad.log_every == 0 and (self.hooks.on_log or self.progress or self.dist.world_size > 1):
                now = time.perf_counter()
                totals = self.totals()  # the one host sync of this read
                # The train curve: a true mean over this interval, the running sums minus the last read's.
                interval = [now_total - then for now_total, then in zip(totals, self.state.interval)]
                record = {
                    "kind": "train",
                    "step": s.step,
                    "epoch": round(epoch + next_batch / n_micro, 4),
                    **self.read_running(interval),
                    "samples_per_second": (s.samples_total - log_seen) / (now - log_clock),
                }
                self.mark_interval(totals)
                log_clock, log_seen = now, s.samples_total
                s.history.append(record)
                self.call(self.hooks.on_log, record)
                if self.progress:
                    self.progress.log(record)
            if cad.eval_every_steps and s.step % cad.eval_every_steps == 0 and mid_epoch:
                t = time.perf_counter()
                self.run_eval(epoch + next_batch / n_micro)
                eval_seconds += time.perf_counter() - t
                log_clock, log_seen = time.perf_counter(), s.samples_total
            signum = self.pending_signal()
            if (cad.checkpoint_every and s.step % cad.checkpoint_every == 0 and mid_epoch) or signum is not None:
                s.train_seconds = seconds_at_start + time.perf_counter() - clock - eval_seconds
                self.checkpoint()
            if signum is not None:
                if self.progress:
                    self.progress.close()
                raise StopRequested(signum, s.step)
            capped = bool(self.max_steps) and s.step >= self.max_steps
            if (self.stop_reason or capped) and mid_epoch:
                s.train_seconds = seconds_at_start + time.perf_counter() - clock - eval_seconds
                if capped and not self.stop_reason:  # a smoke test still evaluates what it trained
                    record = self.run_eval(epoch + next_batch / n_micro, train_seconds=round(s.train_seconds, 4))
                    if self.progress:
                        self.progress.end_epoch(epoch, record, time.perf_counter() - clock)
                self.checkpoint()
                return self.stop_message()
        return self.end_epoch(epoch, clock, eval_seconds, seen_at_start, seconds_at_start)

    def stop_message(self) -> str:
        if self.stop_reason:
            return f"stopped by a callback at step {self.state.step}: {self.stop_reason}"
        return f"stopped at max_steps={self.max_steps}"

    def pending_signal(self) -> int | None:
        if self.stop_signal is None:
            return None
        signum = self.stop_signal()
        if self.dist.world_size > 1:
            # Ranks must stop at the same step; agreeing is a collective, so only every log_every steps.
            if self.state.step % self.cadence.log_every:
                return None
            signum = agree_max(signum or 0, self.dist, self.device) or None
        return signum

    def end_epoch(
        self, epoch: int, clock: float, eval_seconds: float, seen_at_start: int, seconds_at_start: float
    ) -> str | None:
        s, sel = self.state, self.selection
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the clock must not stop before the queued work has run
        epoch_seconds = time.perf_counter() - clock - eval_seconds
        s.train_seconds = seconds_at_start + epoch_seconds
        if self.replan is not None:
            epochs = self.replan(s.train_seconds, epoch + 1, s.step)
            if epochs is not None:
                self.epochs = s.planned_epochs = epochs
                if self.progress:
                    self.progress.epochs = epochs
        wait = getattr(self.train, "wait_seconds", 0.0)
        record = self.run_eval(
            epoch + 1,
            train_samples_per_second=(s.samples_total - seen_at_start) / max(epoch_seconds, 1e-9),
            train_seconds=round(s.train_seconds, 4),
            data_wait_seconds=round(wait, 4),
            data_wait_share=round(wait / max(epoch_seconds, 1e-9), 4),
        )
        if self.progress:
            self.progress.end_epoch(epoch, record, time.perf_counter() - clock)
        stopped = None
        if self.stop_reason or (self.max_steps and s.step >= self.max_steps):
            stopped = self.stop_message()
        elif sel.patience and s.stale_evals >= sel.patience and epoch + 1 < self.epochs:
            stopped = (
                f"stopped after epoch {epoch + 1}: {sel.monitor} did not improve by more than "
                f"{sel.min_delta:g} in {sel.patience} evaluation(s)"
            )
        s.epoch, s.batch = epoch + 1, 0
        self.checkpoint()
        if stopped is None and self.stop_reason:  # raised by the checkpoint hook itself
            stopped = self.stop_message()
        return stopped


def train_loop(
    model,
    train,
    *,
    device: torch.device,
    optimizer,
    scheduler,
    epochs: int,
    loss_fn: Callable,
    correct_fn: Callable | None = None,
    precision: str = "fp32",
    grad_accum_steps: int = 1,
    log_every: int = 50,
    on_log: Callable[[dict], None] | None = None,
    progress: Progress | None = None,
    start: dict | None = None,
) -> LoopResult:
    """The loop without a harness (no run folder, no evaluation): for tests, benchmarks and notebooks."""
    stepper = Stepper(
        model,
        optimizer,
        scheduler,
        device=device,
        loss_fn=loss_fn,
        correct_fn=correct_fn or top1_correct,
        precision=precision,
    )
    driver = Driver(
        stepper,
        train,
        LoopState.from_position(start),
        epochs=epochs,
        device=device,
        grad_accum_steps=grad_accum_steps,
        cadence=Cadence(log_every=log_every),
        selection=Selection(monitor="train.loss", mode="min"),
        hooks=Hooks(on_log=on_log),
        progress=progress,
    )
    return driver.run()
