"""One training run for any task: `train(cfg, task=...)`.

The order of events (fastai's `show_training_loop` idea: readable in one place):
placement -> task.build -> run folder (locked) + resume point -> threads/compile -> epochs that
fit time_budget_s -> config.yaml, meta.json, env.json -> optimizer, schedule -> the loop (metrics
log, best keeper, checkpoints, signals, re-plans of the budget) -> best weights -> task.finish ->
summary.json, report.html.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tocha import runfolder as rf
from tocha import tasks
from tocha.config import AUTO, DEFAULT_LR, TrainConfig, dump_yaml
from tocha.engine import distributed, resume
from tocha.engine.checkpoint import load_weights, save_weights, write_text_atomic
from tocha.engine.distributed import DistInfo
from tocha.engine.ema import WeightEMA
from tocha.engine.loop import Cadence, Driver, Hooks, LoopResult, Selection
from tocha.engine.optim import build_optimizer, build_scheduler, check_schedule
from tocha.engine.progress import Progress
from tocha.engine.state import LoopState
from tocha.engine.step import Stepper
from tocha.errors import UserError
from tocha.hardware import describe_environment
from tocha.harness import callbacks as callbacks_module
from tocha.harness import placement as placing
from tocha.harness import scale
from tocha.harness.signals import Interrupted, StopSignals, training_guard
from tocha.harness.tune import compile_model, peak_memory_mb, pick_threads, seconds_per_step
from tocha.metrics.names import default_mode
from tocha.tasks.base import Built

log = logging.getLogger("tocha")
DATA_WAIT_WARN = 0.25  # share of an epoch spent waiting for the DataLoader that earns a warning
REPLAN_MARGIN = 1.03  # time_budget_s, after each epoch: another epoch is added only with 3% to spare
BUDGET_MARGIN = 1.08  # time_budget_s: epochs ran up to 10.6% longer than their early steps said (BENCHMARKS.md)


@dataclass(frozen=True)
class FitResult:
    model: nn.Module  # with the best checkpoint's weights loaded
    run_dir: Path | None
    best: dict | None  # {"metric", "value", "epoch", "step"}
    history: tuple[dict, ...]
    val: object  # the task's validation metrics of the best model
    test: object  # ... and of the test split (None without one)
    summary: dict
    extra: dict = dataclasses.field(default_factory=dict)  # task-specific values (a baseline, a sample)
    headline: tuple[str, ...] = ()  # the task's closing lines for a terminal (the last one is its speed)
    meta: dict = dataclasses.field(default_factory=dict)  # meta.json: how inputs are prepared, the classes

    def __getattr__(self, name: str):
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        """A few readable lines (a notebook shows this), not the whole history."""
        s = self.summary
        lines = [f"FitResult(task={s.get('task')}, {s.get('steps', 0):,} steps, {s.get('wall_seconds', 0):.1f} s wall)"]
        if self.best:
            b = self.best
            lines.append(f"  best {b['metric']} = {b['value']:.4f} at epoch {b['epoch']:g} (step {b['step']:,})")
        for split in ("val", "test"):
            scores = s.get(split)
            if isinstance(scores, dict):
                shown = [f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)][:4]
                lines.append(f"  {split:<4} " + ", ".join(shown))
        if s.get("early_stop"):
            lines.append(f"  {s['early_stop']}")
        lines.append(f"  run folder {self.run_dir}" if self.run_dir else "  no run folder (pass out=... to write one)")
        return "\n".join(lines)


def train(
    cfg: TrainConfig,
    *,
    task=None,
    model: nn.Module | None = None,
    data=None,
    argv: list[str] | None = None,
    loss=None,
    callbacks=None,
    verbose: bool = True,
) -> FitResult:
    """Train `cfg` with `task` (default: the registry's `cfg.task`); rank 0 writes the run folder.

    On one process, or as one rank of several under torchrun (the environment says which). `model`
    and `data` are handed-in objects (tocha.fit); `argv` marks a CLI run (a run folder is always written).
    `loss(output, y)` replaces the task's training loss; `callbacks` see harness/callbacks.py;
    `verbose=False` shortens the hardware lines to one.
    """
    dist = distributed.from_env()
    if dist.world_size > 1 and tasks.info(cfg.task).one_process:
        raise UserError(f"task={cfg.task} runs in one process", where="torchrun", fix="run it with plain 'tocha train'")
    scale.check_settings(dist, batch_size=cfg.batch_size, device=cfg.device, on_nonfinite=cfg.on_nonfinite)
    task = task or tasks.create(cfg.task)
    cfg = dataclasses.replace(cfg, lr=DEFAULT_LR[cfg.optimizer] if cfg.lr == AUTO else cfg.lr)
    hooks = callbacks_module.collect(callbacks)
    return scale.guarded(
        dist, cfg.dist.timeout_s, lambda: TrainingRun(cfg, task, dist, argv, loss, hooks, verbose).run(model, data)
    )


class TrainingRun:
    def __init__(
        self,
        cfg: TrainConfig,
        task,
        dist: DistInfo,
        argv: list[str] | None,
        loss=None,
        user_hooks: dict | None = None,
        verbose: bool = True,
    ) -> None:
        self.cfg, self.task, self.dist, self.argv = cfg, task, dist, argv
        self.loss, self.user_hooks, self.verbose = loss, user_hooks or {}, verbose
        self.writes_run = cfg.out is not None or argv is not None
        self.run_dir: Path | None = None
        self.metrics_log: rf.MetricsLog | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.slow_input_warned = False
        self.lock: rf.RunLock | None = None
        self.schedule_notes: list[str] = []
        self.budget: dict | None = None  # time_budget_s: what was planned (summary.json "time_budget")

    # ------------------------------------------------------------------ setup
    def run(self, model: nn.Module | None, data) -> FitResult:
        try:
            return self.train(model, data)
        finally:  # a notebook keeps its process: another one may write the folder once this run is over
            if self.lock is not None:
                self.lock.release()

    def train(self, model: nn.Module | None, data) -> FitResult:
        cfg, dist = self.cfg, self.dist
        if cfg.time_budget_s and dist.world_size > 1:
            raise UserError(
                f"time_budget_s plans the epochs of one process; this run has {dist.world_size}",
                where="config key time_budget_s",
                fix="set epochs (and time_budget_s=0) for a run of several processes",
            )
        placing.seed_everything(cfg.seed, cfg.deterministic)
        placement = placing.resolve(
            device=cfg.device,
            precision=cfg.precision,
            workers=cfg.data.workers,
            threads=cfg.threads,
            batch_size=cfg.batch_size,
            deterministic=cfg.deterministic,
            backend=cfg.dist.backend,
            timeout_s=cfg.dist.timeout_s,
            dist=dist,
        )
        built = self.task.build(cfg, placement, data=data, model=model)
        self.custom_loss(built)
        if cfg.limit_val_batches and "val" in built.batches:
            built.batches["val"] = limit_batches(built.batches["val"], cfg.limit_val_batches, dist)
        steps_per_epoch = math.ceil(len(built.batches["train"]) / cfg.grad_accum_steps)
        # Checked with the real step count before the run folder exists: a run that cannot start leaves none.
        self.schedule_notes = self.checked_schedule(steps_per_epoch, cfg.epochs)
        out, loaded = scale.from_rank0(dist, lambda: self.open_run_folder(built)) if self.writes_run else (None, None)
        self.run_dir = Path(out) if out is not None and dist.is_main else None
        built.placement, step_model, speed_notes = self.tune(built)
        if cfg.time_budget_s:
            self.plan_epochs(built, steps_per_epoch, loaded)
        resolved = self.resolved_config(built, out)
        if dist.is_main:
            self.log_start(built, resolved, speed_notes, loaded)
        if self.run_dir is not None:
            self.write_run_start(resolved, built)
        return self.fit(built, step_model, resolved, loaded, steps_per_epoch)

    def plan_epochs(self, built: Built, steps_per_epoch: int, loaded) -> None:
        """time_budget_s: as many of `epochs` as fit, from 40 steps of a copy of the model timed here.

        The run's model, optimizer and random numbers are untouched (the copy has its own optimizer;
        the RNGs are put back), so a budgeted run trains exactly as `epochs=N time_budget_s=0` would
        until `replan`, after an epoch, corrects N from the epochs as they ran. A resumed run
        keeps the epochs it planned (the checkpoint, else config.yaml), whatever this machine does now."""
        cfg = self.cfg
        if loaded:
            from tocha import config

            planned = loaded.state["position"].get("planned_epochs") or config.load(self.run_dir / rf.CONFIG).epochs
            self.budget = {"seconds": cfg.time_budget_s, "epochs": planned, "max_epochs": cfg.epochs, "resumed": True}
            self.cfg = dataclasses.replace(cfg, epochs=planned)
            return
        twin = copy.deepcopy(built.model)
        stepper = Stepper(
            twin,
            self.make_optimizer(twin, built),
            None,
            device=built.placement.device,
            loss_fn=built.loss_fn,
            correct_fn=built.correct_fn,
            precision=built.placement.precision,
            grad_clip=cfg.grad_clip,
        )
        rng = resume.rng_state(built.generators)
        try:
            step_s = seconds_per_step(stepper, built.batches["train"], cfg.grad_accum_steps)
        finally:
            resume.restore_rng(rng, built.generators)
        epoch_s = step_s * steps_per_epoch
        fits = math.floor(cfg.time_budget_s / (epoch_s * BUDGET_MARGIN))
        epochs = max(1, min(cfg.epochs, fits))
        self.budget = {
            "seconds": cfg.time_budget_s,
            "epoch_seconds_estimate": round(epoch_s, 6),
            "epochs": epochs,
            "max_epochs": cfg.epochs,
        }
        if fits < 1:
            note = f"one epoch takes ~{epoch_s:.1f} s here, more than the budget: 1 epoch"
        elif fits < cfg.epochs:
            note = f"an epoch takes ~{epoch_s:.1f} s here: {epochs} of epochs={cfg.epochs} fit"
        else:
            note = f"an epoch takes ~{epoch_s:.1f} s here: all {cfg.epochs} epochs fit"
        self.cfg = dataclasses.replace(cfg, epochs=epochs)
        self.schedule_notes = [f"time_budget_s={cfg.time_budget_s:g}: {note}, the schedule sized to them"]
        self.schedule_notes += self.checked_schedule(steps_per_epoch, epochs)

    def replan(self, seconds: float, done: int, step: int) -> int | None:
        """time_budget_s, after each epoch: the epochs `replanned_epochs` says fit, from the epochs as
        they ran (on this project's shared 2-core machines the steps timed before training were off
        by up to a third, and epochs drifted by 15% within a run). The schedule is re-sized from the
        step reached, so the learning rate goes on from where it is, and config.yaml is rewritten
        with the new epochs. None: the plan stands."""
        cfg, budget = self.cfg, self.budget
        if done == 1:
            budget["first_epoch_seconds"] = round(seconds, 3)
        epochs = replanned_epochs(seconds, done, cfg.epochs, budget["seconds"], budget["max_epochs"])
        if epochs is None:
            return None
        try:
            self.checked_schedule(self.steps_per_epoch, epochs)
        except UserError:  # e.g. a warm-up longer than the shorter run: keep the plan
            return None
        log.info(
            "schedule   time_budget_s=%g: %d epoch(s) took %.1f s: %d epochs instead of %d, the schedule re-sized",
            budget["seconds"],
            done,
            seconds,
            epochs,
            cfg.epochs,
        )
        budget.setdefault("planned_before_training", cfg.epochs)
        budget["epochs"] = epochs
        budget.setdefault("replans", []).append(
            {"after_epoch": done, "train_seconds": round(seconds, 6), "epochs": epochs}
        )
        self.cfg = dataclasses.replace(cfg, epochs=epochs)
        self.scheduler = self.stepper.scheduler = self.make_scheduler(self.optimizer, done=step)
        self.resolved = resolved = dataclasses.replace(self.resolved, epochs=epochs)
        if self.run_dir is not None:
            self.write(lambda: write_text_atomic(self.run_dir / rf.CONFIG, dump_yaml(resolved)), rf.CONFIG)
        return epochs

    def make_scheduler(self, optimizer: torch.optim.Optimizer, done: int = 0):
        """The run's schedule over total_steps; `done` > 0: as it stands after that many steps."""
        cfg = self.cfg
        scheduler = build_scheduler(
            optimizer,
            cfg.scheduler,
            total_steps=self.total_steps(self.steps_per_epoch),
            steps_per_epoch=self.steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * self.steps_per_epoch),
            step_epochs=cfg.step_epochs,
            step_gamma=cfg.step_gamma,
        )
        if scheduler is not None and done:
            with warnings.catch_warnings():  # "step() before optimizer.step()": this is a fast-forward
                warnings.simplefilter("ignore", UserWarning)
                scheduler.last_epoch = done - 1
                scheduler.step()
        return scheduler

    def make_optimizer(self, model: nn.Module, built: Built) -> torch.optim.Optimizer:
        cfg = self.cfg
        return build_optimizer(
            model,
            cfg.optimizer,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            fused=built.placement.device.type == "cuda" or None,
            lr_of=built.lr_of,
        )

    def total_steps(self, steps_per_epoch: int, epochs: int | None = None) -> int:
        """The optimizer steps that will run (of `epochs`, default the config's): max_steps cuts the
        run (and sizes the schedule) short."""
        total = (self.cfg.epochs if epochs is None else epochs) * steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def checked_schedule(self, steps_per_epoch: int, epochs: int) -> list[str]:
        """The schedule's notes for a run of `epochs`; UserError for a combination it refuses."""
        cfg = self.cfg
        return list(
            check_schedule(
                cfg.scheduler,
                self.total_steps(steps_per_epoch, epochs),
                round(cfg.warmup_epochs * steps_per_epoch),
                steps_per_epoch=steps_per_epoch,
                step_epochs=cfg.step_epochs,
            )
        )

    def custom_loss(self, built: Built) -> None:
        """tocha.fit(loss=callable): the training loss replaced; evaluation keeps the task's own metrics."""
        if self.loss is None:
            return
        wrap = getattr(self.task, "wrap_loss", None)
        if wrap is None:
            raise UserError(
                f"task={self.task.name} does not take a custom loss",
                where="tocha.fit loss",
                allowed="task=classify, task=regress",
            )
        built.loss_fn = built.probe_loss = wrap(self.loss)
        built.lines.append(
            f"loss       {getattr(self.loss, '__name__', type(self.loss).__name__)} (given to tocha.fit)"
        )

    def open_run_folder(self, built: Built) -> tuple[str, resume.Loaded | None]:
        cfg = self.cfg
        out = cfg.out or rf.default_run_name(*built.run_name)
        self.lock = rf.lock_run_dir(Path(out))  # a second writer is refused; the OS releases it if we die
        loaded = find_resume_point(Path(out)) if cfg.resume == "auto" else None
        if loaded:
            check_same_kind_of_run(Path(out), built.meta)
        if not loaded:  # resume=auto without a usable checkpoint starts over in the same folder
            rf.prepare_run_dir(out, overwrite=cfg.overwrite or cfg.resume == "auto")
        return out, loaded

    def tune(self, built: Built):
        """Threads by measurement (one process on CPU), the DDP wrap, then the optional torch.compile."""
        cfg, placement = self.cfg, built.placement
        step_model = scale.wrap(built.model, self.dist, placement.device)
        if placement.device.type == "cpu" and cfg.threads == AUTO and self.dist.world_size == 1:
            threads, why = pick_threads(
                built.model, built.probe, built.probe_loss or built.loss_fn, deterministic=cfg.deterministic
            )
            placement = placement.with_threads(threads, why)
            reset = getattr(built.model, "reset_state", None)  # a recurrent model starts its stream afresh
            if reset is not None:
                reset()
        if not cfg.compile:
            return placement, step_model, list(placement.notes)
        compiled, note = compile_model(step_model, built.probe, built.probe_loss or built.loss_fn)
        return placement, compiled, [*placement.notes, note]

    def resolved_config(self, built: Built, out: str | None) -> TrainConfig:
        """The config with every 'auto' replaced by what was chosen, so it can be fed back as it is."""
        cfg, hw = self.cfg, built.placement.hw
        tensorboard = cfg.log.tensorboard
        if tensorboard == AUTO:
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        mode = default_mode(cfg.monitor.partition(".")[2]) if cfg.mode == AUTO else cfg.mode
        resolved = dataclasses.replace(
            cfg,
            time_budget_s=0.0,  # spent: cfg.epochs are the planned ones, so the file reruns the same run
            device=hw.device,
            precision=hw.precision,
            threads=hw.threads,
            mode=mode,
            out=out,
            log=dataclasses.replace(cfg.log, tensorboard=tensorboard),
            data=dataclasses.replace(cfg.data, workers=hw.workers),
        )
        for key, value in built.resolved.items():
            section, _, name = key.rpartition(".")
            if section:
                resolved = dataclasses.replace(
                    resolved, **{section: dataclasses.replace(getattr(resolved, section), **{name: value})}
                )
            else:
                resolved = dataclasses.replace(resolved, **{name: value})
        return resolved

    def log_start(self, built: Built, resolved: TrainConfig, speed_notes: list[str], loaded) -> None:
        placement, cfg = built.placement, self.cfg
        lines = [line for line in built.lines if not line.startswith("model ")]
        hw_lines = placement.hw.lines() if self.verbose else [placement.hw.summary_line()]
        if loaded:  # the resolved config.yaml is read back: its values were chosen here, not by the user
            hw_lines = [line.replace("set by the user", "as the run was started (config.yaml)") for line in hw_lines]
        lines += hw_lines
        lines += [f"speed      {note}" for note in speed_notes] if self.verbose else []
        if self.dist.world_size > 1:
            lines.append(
                f"processes  {self.dist.world_size} (DistributedDataParallel, {placement.backend} backend, "
                f"rank 0 of {self.dist.world_size} writes; collectives time out after "
                f"{cfg.dist.timeout_s:g} s)"
            )
        lines.append(scale.batch_rule(cfg.batch_size, cfg.grad_accum_steps, resolved.lr, self.dist.world_size))
        lines += [f"schedule   {note}" for note in self.schedule_notes]
        lines += [line for line in built.lines if line.startswith("model ")]
        if self.run_dir is not None:
            lines.append(f"run folder {self.run_dir}")
        if cfg.max_steps:
            lines.append(f"max_steps  {cfg.max_steps}: the run stops there, the schedule sized to it")
        if cfg.limit_val_batches:
            lines.append(f"validate   on the first {cfg.limit_val_batches} batch(es) only (limit_val_batches)")
        if loaded:
            position = loaded.state["position"]
            lines.append(f"resume     from {loaded.path} (epoch {position['epoch']}, step {position['step']})")
            if cfg.max_steps and position["step"] >= cfg.max_steps and position["epoch"] < cfg.epochs:
                lines.append(
                    f"resume     the run had reached max_steps={cfg.max_steps}: nothing to train; the best "
                    "checkpoint is evaluated again and summary.json and report.html are rewritten"
                )
            elif position["epoch"] >= cfg.epochs:
                lines.append(
                    f"resume     the run had finished all {cfg.epochs} epochs: nothing to train; the best "
                    "checkpoint is evaluated again and summary.json and report.html are rewritten"
                )
        for line in lines:
            log.info("%s", line)

    def write_run_start(self, resolved: TrainConfig, built: Built) -> None:
        """config.yaml (fully resolved), meta.json (what eval/predict/generate need), env.json (versions, command)."""
        run_dir = self.run_dir
        self.write(lambda: write_text_atomic(run_dir / rf.CONFIG, dump_yaml(resolved)), rf.CONFIG)
        self.write(lambda: rf.write_json(run_dir / rf.META, built.meta), rf.META)
        env = {
            **describe_environment(),
            "device": built.placement.hw.device,
            "command": self.argv if self.argv is not None else sys.argv,
            "git_sha": rf.git_sha(),
            "world_size": self.dist.world_size,
            "hardware_reasons": built.placement.hw.reasons,
        }
        self.write(lambda: rf.write_json(run_dir / rf.ENV, env), rf.ENV)

    def write(self, write, what: str) -> None:
        """A write into the run folder (`what`: the file, relative to it); a full disk or lost
        permission becomes one clear error naming the file and the newest complete checkpoint."""
        try:
            write()
        except Exception as exc:  # torch.save (RuntimeError) and safetensors (SafetensorError) wrap OSError
            if not isinstance(exc, OSError) and not _is_io_error(exc):
                raise
            raise write_error(exc, self.run_dir, what) from None

    # ------------------------------------------------------------------ the loop
    def fit(
        self, built: Built, step_model: nn.Module, resolved: TrainConfig, loaded, steps_per_epoch: int
    ) -> FitResult:
        cfg, placement, run_dir = self.cfg, built.placement, self.run_dir
        device = placement.device
        optimizer = self.make_optimizer(built.model, built)
        self.steps_per_epoch, self.resolved = steps_per_epoch, resolved
        scheduler = self.make_scheduler(optimizer)
        if run_dir is not None:
            self.metrics_log = rf.MetricsLog(run_dir, csv_enabled=cfg.log.csv, tensorboard=resolved.log.tensorboard)
        # EMA (issue 17): the average is what evaluation scores and what the best checkpoint holds.
        # On resume it starts again from the restored weights (the average is not in the checkpoint).
        self.ema = WeightEMA(built.model, cfg.ema, cfg.ema_start) if cfg.ema is not None else None
        self.scored = dataclasses.replace(built, model=self.ema.module) if self.ema else built
        state = LoopState(planned_epochs=cfg.epochs if self.budget else 0)  # the epochs its schedule is for
        if loaded:
            state = LoopState.from_position(restore(loaded, built.model, optimizer, scheduler, built.generators))
            if self.ema is not None:
                self.ema = WeightEMA(built.model, cfg.ema, 0)
                self.scored = dataclasses.replace(built, model=self.ema.module)
            if self.metrics_log:
                self.metrics_log.restart(state.history)
        stepper = Stepper(
            step_model,
            optimizer,
            scheduler,
            device=device,
            loss_fn=built.loss_fn,
            correct_fn=built.correct_fn,
            precision=placement.precision,
            grad_clip=cfg.grad_clip,
            skip_nonfinite=cfg.on_nonfinite == "skip",
            ema=self.ema,
        )
        self.optimizer, self.scheduler, self.built, self.stepper = optimizer, scheduler, built, stepper
        signals = StopSignals(announce=self.dist.is_main) if self.writes_run else None
        try:
            driver = Driver(
                stepper,
                built.batches["train"],
                state,
                epochs=cfg.epochs,
                device=device,
                grad_accum_steps=cfg.grad_accum_steps,
                evaluate=(lambda: self.task.evaluate(self.scored, "val")) if "val" in built.batches else None,
                cadence=Cadence(cfg.log_every, cfg.eval_every_steps, cfg.checkpoint.every_steps),
                selection=Selection(cfg.monitor, resolved.mode, cfg.early_stop.patience, cfg.early_stop.min_delta),
                hooks=self.hooks(),
                max_steps=cfg.max_steps,
                progress=Progress(
                    epochs=min(cfg.epochs, math.ceil(self.total_steps(steps_per_epoch) / steps_per_epoch)),
                    steps_per_epoch=len(built.batches["train"]),
                    enabled=self.dist.is_main and cfg.log.progress,
                ),
                dist=self.dist,
                stop_signal=signals.pending if signals else None,
                replan=self.replan if self.budget and not loaded else None,
            )
            with training_guard(run_dir, cfg.lr, signals, self.dist.world_size):
                result = driver.run()
            fitted = self.finish(built, self.resolved, result)  # replan may change its epochs
            if signals and signals.pending() is not None:  # a signal after the loop: the run is complete
                raise Interrupted(signals.pending(), result.steps, run_dir, self.dist.world_size)
            return fitted
        finally:
            if signals:
                signals.uninstall()
            if self.metrics_log:
                self.metrics_log.close()

    def log_metrics(self, record: dict) -> None:
        self.write(lambda: self.metrics_log.write(record), rf.METRICS)

    def hooks(self) -> Hooks:
        """The harness's own hooks, then the user's callbacks (tocha.fit callbacks=) at the same points."""
        users = self.user_hooks
        own_checkpoint = self.on_checkpoint if self.writes_run else None
        return Hooks(
            on_log=callbacks_module.chain(
                self.log_metrics if self.metrics_log else None,
                users.get("on_log", []),
                lambda record: (dict(record),),
            ),
            on_eval_end=callbacks_module.chain(
                self.on_eval_end, users.get("on_eval_end", []), lambda record, improved: (dict(record), improved)
            ),
            on_checkpoint=callbacks_module.chain(
                own_checkpoint,
                users.get("on_checkpoint", []),
                lambda state: (
                    {"step": state.step, "epoch": state.epoch, "batch": state.batch, "run_dir": self.run_dir},
                ),
            ),
        )

    def on_eval_end(self, record: dict, improved: bool) -> None:
        built, run_dir = self.scored, self.run_dir  # with EMA on, the averaged weights are saved
        if record.get("data_wait_share", 0) > DATA_WAIT_WARN and not self.slow_input_warned and self.dist.is_main:
            self.slow_input_warned = True
            log.warning(
                "input bound: the step waited for the DataLoader %.0f%% of the epoch; try more "
                "data.workers (now %d), a smaller image_size, or data.resident=true if it fits",
                100 * record["data_wait_share"],
                built.placement.hw.workers,
            )
        if self.metrics_log:
            self.log_metrics(record)
        if run_dir is None:
            if improved:
                self.best_state = {k: v.detach().clone() for k, v in built.model.state_dict().items()}
            return
        after_eval = getattr(self.task, "after_eval", None)  # optional: text a task appends to files
        for name, text in (after_eval(built, record) if after_eval else {}).items():
            self.write(lambda n=name, t=text: _append(run_dir / n, t), name)
        self.write(
            lambda: save_weights(built.model, run_dir / rf.LAST_WEIGHTS, built.weights_metadata), rf.LAST_WEIGHTS
        )
        if improved:
            self.write(
                lambda: save_weights(built.model, run_dir / rf.BEST_WEIGHTS, built.weights_metadata), rf.BEST_WEIGHTS
            )

    def on_checkpoint(self, state: LoopState) -> None:
        if self.run_dir is None:  # every rank computes the state (a collective); rank 0 writes it
            return
        full = {
            "format": resume.FORMAT,
            "position": state.to_position(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": resume.rng_state(self.built.generators),
        }
        self.write(
            lambda: resume.write(
                self.run_dir / "checkpoints", state.step, self.built.model, full, keep=self.cfg.checkpoint.keep
            ),
            f"checkpoints/{resume.PREFIX}{state.step:08d}",
        )

    # ------------------------------------------------------------------ the end
    def finish(self, built: Built, resolved: TrainConfig, result: LoopResult) -> FitResult:
        """Final numbers come from the best checkpoint, which is what `tocha eval` and `predict` use."""
        cfg, run_dir, placement = self.cfg, self.run_dir, built.placement
        load_best(built.model, run_dir, self.best_state)
        memory, memory_kind = peak_memory_mb(placement.device)
        summary: dict = {
            "task": self.task.name,
            "best": result.best,
            "epochs": cfg.epochs,
            "steps": result.steps,
            "device": placement.hw.device,
            "precision": placement.precision,
        }
        if self.budget:
            summary["time_budget"] = self.budget
        if result.stopped_early:
            summary["early_stop"] = result.stopped_early
            log.info("early stop %s", result.stopped_early)
        if result.skipped_steps:
            summary["skipped_nonfinite_batches"] = result.skipped_steps
            log.warning("skipped %d batch(es) with a NaN/Inf loss (on_nonfinite=skip)", result.skipped_steps)
        summary.update(
            wall_seconds=round(result.wall_seconds, 3),
            train_seconds=round(result.train_seconds, 3),
            train_samples_per_second=round(result.train_samples / max(result.train_seconds, 1e-9), 1),
            world_size=self.dist.world_size,
            batch_size_global=cfg.batch_size,
            batch_size_per_process=placement.batch_size_per_process,
            peak_memory_mb=round(memory, 1),
            peak_memory_kind=memory_kind,
        )
        done = self.task.finish(built, cfg, summary)
        summary.update(done.summary)
        if run_dir is not None:
            self.write(lambda: rf.write_json(run_dir / rf.SUMMARY, summary), rf.SUMMARY)
            for name, value in done.jsons.items():
                self.write(lambda n=name, v=value: rf.write_json(run_dir / n, v), name)
            for name, text in done.files.items():
                self.write(lambda n=name, t=text: write_text_atomic(run_dir / n, t), name)
            self.write_report(summary, resolved, result, done.report)
        values = dict(done.values)
        return FitResult(
            built.model,
            run_dir,
            result.best,
            result.history,
            values.pop("val", None),
            values.pop("test", None),
            summary,
            values,
            tuple(done.headline),
            built.meta,
        )

    def write_report(self, summary: dict, resolved: TrainConfig, result: LoopResult, report: dict) -> None:
        from tocha.reports.html import write_report  # matplotlib: only when a report is written

        report = dict(report)
        title = f"tocha run {self.run_dir.name}{report.pop('title_suffix', '')}"
        kwargs = {"test_metrics": None, "val_metrics": None, **report}
        self.write(
            lambda: write_report(
                self.run_dir,
                title=title,
                summary=summary,
                config_text=applicable_yaml(resolved, self.dist.world_size),
                history=list(result.history),
                **kwargs,
            ),
            rf.REPORT,
        )


def limit_batches(batches, n: int, dist: DistInfo):
    """The first `n` validation batches (limit_val_batches); on several processes all are kept."""
    from tocha.engine.batches import Limited

    if dist.world_size > 1:  # the gather of metrics counts the whole split's samples
        log.warning("limit_val_batches=%d is ignored on %d processes", n, dist.world_size)
        return batches
    return Limited(batches, n)


def applicable_yaml(resolved: TrainConfig, world_size: int) -> str:
    """The report's config: the keys that apply to this task and model (config.yaml keeps them all)."""
    import yaml

    from tocha.config import to_dict
    from tocha.reports.config_table import applicable

    own = tasks.info(resolved.task)
    others = frozenset().union(*(t.own_keys for t in tasks.TASKS.values() if t.name != own.name)) - own.own_keys
    kept = applicable(to_dict(resolved), world_size, other_tasks_keys=others, data_keys=own.data_keys)
    return yaml.safe_dump(kept, sort_keys=False, default_flow_style=None)


def find_resume_point(run_dir: Path) -> resume.Loaded | None:
    """The newest checkpoint of `run_dir` that passes verification, or None (damaged ones are reported)."""
    loaded = resume.latest_valid(run_dir / "checkpoints")
    if loaded is None:
        return None
    for note in loaded.skipped:
        log.warning("checkpoint %s: not used", note)
    return loaded if loaded.state else None


def resume_config(run_dir: str, *, command: str) -> TrainConfig:
    """The config that continues `run_dir` (its own config.yaml, resume=auto), after checking that it has a
    valid checkpoint and that `command` ('train' or 'distill') is the one that continues it."""
    from tocha import config

    where = f"tocha {command} --resume"
    path = rf.check_run_dir(run_dir)
    if not rf.resume_command(run_dir).startswith(f"tocha {command} "):
        raise UserError(
            f"'{run_dir}' is {'a distilled student' if command == 'train' else 'not a distilled student'}",
            where=where,
            fix=f"continue it with: {rf.resume_command(run_dir)}",
        )
    found = resume.latest_valid(path / "checkpoints")
    if found is None or not found.state:
        damaged = f" ({'; '.join(found.skipped)})" if found else ""
        again = f"tocha train {path / rf.CONFIG}" if command == "train" else "the same tocha distill command"
        raise UserError(
            f"'{run_dir}' has no valid checkpoint to resume from{damaged}",
            where=where,
            fix=f"start it again with: {again} out={run_dir} overwrite=true",
        )
    return config.load(path / rf.CONFIG, [f"out={run_dir}", "resume=auto"])


def check_same_kind_of_run(run_dir: Path, meta: dict) -> None:
    """A distilled student resumes only with its teacher, and a plain run never gains one."""
    try:
        written = rf.read_json(run_dir / rf.META)
    except UserError:
        return  # meta.json is written before the first checkpoint; damaged, the checkpoint alone decides
    was_student = isinstance(written, dict) and "distilled_from" in written
    if was_student != ("distilled_from" in meta):
        was = "a student distilled from a teacher" if was_student else "trained without a teacher"
        raise UserError(
            f"'{run_dir}' was {was}; resuming it {'without' if was_student else 'with'} one would change its loss",
            where="resume",
            fix=f"continue it with: {rf.resume_command(run_dir)}",
        )


def replanned_epochs(seconds: float, done: int, planned: int, budget: float, max_epochs: int) -> int | None:
    """time_budget_s after `done` epochs took `seconds` of training: the new epoch count, or None to
    keep `planned`. Fewer when `planned` would overrun the budget at the mean epoch so far (never
    fewer than done); more only while at most half of `planned` is done and another epoch fits with
    REPLAN_MARGIN to spare (later the learning rate has mostly decayed); at most max_epochs."""
    mean = max(seconds / done, 1e-9)
    fits = done + math.floor(max(0.0, budget - seconds) / (mean * REPLAN_MARGIN))
    epochs = max(done, min(max_epochs, fits))
    overrun = seconds + (planned - done) * mean > budget
    if epochs < planned and overrun:
        return epochs
    if epochs > planned and 2 * done <= planned:
        return epochs
    return None


def restore(loaded: resume.Loaded, model: nn.Module, optimizer, scheduler, generators: dict) -> dict:
    """Put the checkpoint's weights, optimizer, schedule and RNGs back; returns the loop position."""
    own = model.state_dict()
    wrong = [k for k in own if k not in loaded.weights or loaded.weights[k].shape != own[k].shape]
    if wrong or set(loaded.weights) - set(own):
        raise UserError(
            f"checkpoint {loaded.path} does not fit this model (e.g. {(wrong or ['extra tensors'])[0]})",
            where="resume",
            fix="resume with the run's own config.yaml (tocha train --resume RUN)",
        )
    model.load_state_dict(loaded.weights)
    state = loaded.state
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    resume.restore_rng(state["rng"], generators)
    return state["position"]


def load_best(model: nn.Module, run_dir: Path | None, best_state: dict[str, torch.Tensor] | None) -> None:
    """The best evaluation's weights: the run folder's best checkpoint, or the copy kept in memory without one."""
    if run_dir is not None and (run_dir / rf.BEST_WEIGHTS).exists():
        load_weights(model, run_dir / rf.BEST_WEIGHTS)
    elif best_state is not None:
        model.load_state_dict(best_state)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def write_error(exc: BaseException, run_dir: Path, what: str) -> UserError:
    """The one message for a failed write into a run folder: which file, why, what is kept, how to go on."""
    from tocha.folders import write_failure

    newest = resume.all_checkpoints(run_dir / "checkpoints")
    kept = f"the newest complete checkpoint is {newest[0]}" if newest else "no checkpoint was written yet"
    then = (
        f"continue with: {rf.resume_command(run_dir)}"
        if newest
        else "run the same command again with overwrite=true (or out=PATH on another disk)"
    )
    full = write_failure(exc, run_dir / what).startswith("no space left")
    return UserError(
        f"{write_failure(exc, run_dir / what)}; {kept}",
        where="run folder",
        fix=f"free disk space there, then {then}" if full else f"fix the folder's permissions or mount, then {then}",
    )


def _is_io_error(exc: BaseException) -> bool:
    """torch.save and safetensors report a failed write as RuntimeError/SafetensorError with the OS text."""
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "no space left",
            "disk quota",
            "permission denied",
            "read-only file system",
            "file write failed",
            "errno",
            "i/o error",
        )
    )
