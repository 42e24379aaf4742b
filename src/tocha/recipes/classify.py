"""The image-classification recipe: config in, trained model + run folder + report out.

A plain function that calls small pieces (torchtune style). Config stops here: below this file,
everything takes plain arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from tocha import runfolder as rf
from tocha.config import AUTO, DEFAULT_LR, TrainConfig, dump_yaml
from tocha.data.types import DataSplits, Split
from tocha.engine.batches import DeviceTransform, LoaderBatches, ResidentBatches, TensorItems
from tocha.engine.checkpoint import load_weights, save_weights
from tocha.engine import distributed
from tocha.engine.distributed import DistInfo, gather_for_metrics
from tocha.engine import resume
from tocha.engine.loop import NonFiniteLoss, StopRequested, predict_batches, top1_correct, train_loop
from tocha.engine.optim import build_optimizer, build_scheduler
from tocha.engine.progress import Progress
from tocha.errors import UserError
from tocha.hardware import HardwarePlan, describe_environment, plan, usable_cpus
from tocha.metrics.classification import ClassificationMetrics, classification_metrics, default_mode
from tocha.models import DEFAULT_DROPOUT, ModelSpec, build_model, check_input_size
from tocha.models.transfer import Freezing, load_pretrained
from tocha.recipes import scale
from tocha.recipes.distill import Teacher

log = logging.getLogger("tocha")
DATA_WAIT_WARN = 0.25  # share of an epoch spent waiting for the DataLoader that earns a warning


@dataclass(frozen=True)
class FitResult:
    model: nn.Module                       # with the best checkpoint's weights loaded
    run_dir: Path | None
    best: dict | None                      # {"metric", "value", "epoch", "step"}
    history: tuple[dict, ...]
    val: ClassificationMetrics | None      # of the best model
    test: ClassificationMetrics | None
    summary: dict


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def make_batches(split: Split, batch_size: int, *, device: torch.device, transform: DeviceTransform, train: bool,
                 hw: HardwarePlan, seed: int, dist: DistInfo, resident: bool = True, prepare_once: bool = False):
    """ResidentBatches for in-memory data (unless `resident` is False), a DataLoader otherwise; `batch_size`
    per process, each split sharded over `dist`'s ranks (evaluation gathers the shards back)."""
    if split.inputs is not None and resident:
        return ResidentBatches(split.inputs, split.labels, batch_size, device=device, transform=transform,
                               train=train, seed=seed, rank=dist.rank, world_size=dist.world_size,
                               prepare_once=prepare_once)
    dataset = split.dataset if split.inputs is None else TensorItems(split.inputs, split.labels)
    return LoaderBatches(dataset, batch_size, device=device, transform=transform, train=train,
                         workers=hw.workers, pin_memory=hw.pin_memory, seed=seed, rank=dist.rank,
                         world_size=dist.world_size)


def probe_batch(split: Split, batch_size: int, transform: DeviceTransform, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A first training-sized batch, without touching the training order or the augmentation RNG."""
    x = split.head(batch_size)
    return transform.prepare(x.to(device)), split.labels[:len(x)].to(device)


def configure_cuda(deterministic: bool) -> list[str]:
    """TF32 matmuls/convolutions (Ampere+) and cuDNN autotuning; returns what was set, for the log."""
    notes = []
    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        notes.append("TF32 matmul and convolutions (compute capability >= 8.0)")
    if not deterministic:
        torch.backends.cudnn.benchmark = True
        notes.append("cuDNN benchmark mode (fastest kernels for fixed shapes)")
    return notes


def compile_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, str]:
    """torch.compile with a trial forward+backward; the eager model and the reason when that fails."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # the trial must not move BatchNorm stats
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        compiled = torch.compile(model)
        with torch.random.fork_rng(devices=devices):  # the trial's dropout leaves the run's RNG alone
            nn.functional.cross_entropy(compiled(x), y).backward()
    except Exception as e:  # inductor raises many types: missing compiler, unsupported op, ...
        model.zero_grad(set_to_none=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return model, f"torch.compile failed, training eagerly instead ({type(e).__name__}: {first[:200]})"
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    model.zero_grad(set_to_none=True)
    return compiled, "torch.compile: compiled (the first steps include compile time)"


def evaluate_split(model: nn.Module, batches, *, classes, device, precision, top_k: int,
                   dist: DistInfo = DistInfo(), n_samples: int | None = None) -> tuple[float, ClassificationMetrics]:
    """Loss and metrics over a split; on several ranks each predicts its shard and every rank gets the
    metrics of all `n_samples`, each counted once (the padding `shard` added is dropped)."""
    probs, labels, losses = predict_batches(model, batches, device=device, precision=precision,
                                            loss_fn=partial(nn.functional.cross_entropy, reduction="none"))
    if dist.world_size > 1:
        probs, labels, losses = (gather_for_metrics(t, n_samples, dist, device) for t in (probs, labels, losses))
    loss = losses.double().mean().item() if losses is not None and len(losses) else float("nan")
    return loss, classification_metrics(labels, probs, classes, top_k=(top_k,))


def resolved_config(cfg: TrainConfig, hw: HardwarePlan, data: DataSplits, mode: str, out: str | None,
                    augment: list[str], tensorboard: bool, spec: ModelSpec) -> TrainConfig:
    """The config with every 'auto' replaced by what was chosen, so it can be fed back as it is."""
    return dataclasses.replace(
        cfg, device=hw.device, precision=hw.precision, threads=hw.threads, mode=mode, out=out,
        lr=DEFAULT_LR[cfg.optimizer] if cfg.lr == AUTO else cfg.lr,
        model=dataclasses.replace(cfg.model, dropout=spec.dropout),
        log=dataclasses.replace(cfg.log, tensorboard=tensorboard),
        image_size=data.image_size if data.image_size else AUTO,
        data=dataclasses.replace(cfg.data, workers=hw.workers, augment=augment,
                                 channels=str(data.in_channels) if data.image_size else cfg.data.channels))


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def tune(model: nn.Module, split: Split, cfg: TrainConfig, transform: DeviceTransform, device: torch.device,
         hw: HardwarePlan, *, batch_size: int, dist: DistInfo) -> tuple[HardwarePlan, nn.Module, list[str]]:
    """Measured CPU thread count and the optional torch.compile: (plan, model to step, notes).

    On several processes the model to step is the DDP wrapper (compiled as a whole, as PyTorch
    recommends), and the threads are the machine's share per process, not measured.
    """
    step_model = scale.wrap(model, dist, device)
    if device.type == "cpu" and cfg.threads == AUTO and dist.world_size == 1:
        from tocha.engine.threads import choose_threads, training_step

        x, y = probe_batch(split, batch_size, transform, device)
        threads, why = choose_threads(training_step(model, x, y, nn.functional.cross_entropy), usable_cpus())
        hw = dataclasses.replace(hw, threads=threads, reasons={**hw.reasons, "threads": why})
        torch.set_num_threads(threads)
    if not cfg.compile:
        return hw, step_model, []
    x, y = probe_batch(split, batch_size, transform, device)
    compiled, note = compile_model(step_model, x, y)
    return hw, compiled, [note]


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, step: int, run_dir: Path | None, world_size: int = 1) -> None:
        import signal

        name = signal.Signals(signum).name
        more = f" --nproc {world_size} (or through torchrun as before)" if world_size > 1 else ""
        where = f"; checkpoint written, continue with: tocha train --resume {run_dir}{more}" if run_dir else ""
        super().__init__(f"{name} at step {step}{where}")
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM ask the loop to finish its step and checkpoint; a second SIGINT stops at once."""

    def __init__(self, announce: bool = True) -> None:
        import signal
        import threading

        self.signum: int | None = None
        self.announce = announce  # ranks other than 0 stop silently
        self.previous: dict = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == 2:  # SIGINT again: the user means it
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            log.warning("received %s: finishing this step and writing a checkpoint (Ctrl-C again to quit now)",
                        "SIGINT" if signum == 2 else "SIGTERM" if signum == 15 else f"signal {signum}")

    def pending(self) -> int | None:
        return self.signum

    def uninstall(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def find_resume_point(run_dir: Path) -> resume.Loaded | None:
    """The newest checkpoint of `run_dir` that passes verification, or None (damaged ones are reported)."""
    loaded = resume.latest_valid(run_dir / "checkpoints")
    if loaded is None:
        return None
    for note in loaded.skipped:
        log.warning("checkpoint %s: not used", note)
    return loaded if loaded.state else None


def restore(loaded: resume.Loaded, model: nn.Module, optimizer, scheduler, generators: dict) -> dict:
    """Put the checkpoint's weights, optimizer, schedule and RNGs back; returns the loop position."""
    own = model.state_dict()
    wrong = [k for k in own if k not in loaded.weights or loaded.weights[k].shape != own[k].shape]
    if wrong or set(loaded.weights) - set(own):
        raise UserError(f"checkpoint {loaded.path} does not fit this model (e.g. {(wrong or ['extra tensors'])[0]})",
                        where="resume", fix="resume with the run's own config.yaml (tocha train --resume RUN)")
    model.load_state_dict(loaded.weights)
    state = loaded.state
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    resume.restore_rng(state["rng"], generators)
    return state["position"]


def nonfinite_error(exc: NonFiniteLoss, run_dir: Path | None, cfg: TrainConfig) -> UserError:
    kept = ""
    if run_dir is not None:
        newest = resume.all_checkpoints(run_dir / "checkpoints")
        kept = f"; the last good checkpoint is kept ({newest[0]})" if newest else ""
    return UserError(f"the training loss became NaN or Inf between step {exc.last_good} and step {exc.step}{kept}",
                     where="training",
                     fix=f"lower the learning rate (lr={cfg.lr:g} now), add grad_clip=1.0, use precision=bf16 "
                         "instead of fp16, or on_nonfinite=skip to drop such batches")


@contextlib.contextmanager
def training_guard(run_dir: Path | None, cfg: TrainConfig, signals: StopSignals | None, metrics_log,
                   world_size: int = 1) -> Iterator[None]:
    """Around `train_loop`: a diverged loss or a stop signal becomes the user-facing error; the signal
    handlers and the metrics files are released however the loop ends."""
    try:
        yield
    except NonFiniteLoss as exc:
        raise nonfinite_error(exc, run_dir, cfg) from None
    except StopRequested as exc:
        raise Interrupted(exc.signum, exc.step, run_dir, world_size) from None
    finally:
        if signals:
            signals.uninstall()
        if metrics_log:
            metrics_log.close()


def load_best(model: nn.Module, run_dir: Path | None, best_state: dict[str, torch.Tensor] | None) -> None:
    """The best evaluation's weights: the run folder's best checkpoint, or the copy kept in memory without one."""
    if run_dir is not None and (run_dir / rf.BEST_WEIGHTS).exists():
        load_weights(model, run_dir / rf.BEST_WEIGHTS)
    elif best_state is not None:
        model.load_state_dict(best_state)


def write_run_start(run_dir: Path, resolved: TrainConfig, meta: dict, hw: HardwarePlan, argv: list[str] | None,
                    world_size: int = 1) -> None:
    """config.yaml (fully resolved), meta.json (what eval/predict/generate need) and env.json (versions, command)."""
    from tocha.engine.checkpoint import write_text_atomic

    write_text_atomic(run_dir / rf.CONFIG, dump_yaml(resolved))
    rf.write_json(run_dir / rf.META, meta)
    rf.write_json(run_dir / rf.ENV, {**describe_environment(), "device": hw.device,
                                     "command": argv if argv is not None else sys.argv, "git_sha": rf.git_sha(),
                                     "world_size": world_size, "hardware_reasons": hw.reasons})


def write_or_explain(write, what: str, run_dir: Path) -> None:
    """Run a checkpoint write; a full disk or lost permission becomes one clear error (earlier files stay)."""
    try:
        write()
    except OSError as exc:
        raise UserError(f"cannot write {what} in '{run_dir}': {exc.strerror or exc}", where="run folder",
                        fix="free disk space or fix permissions, then continue with: "
                            f"tocha train --resume {run_dir} (earlier checkpoints are intact)") from None


def train(cfg: TrainConfig, *, model: nn.Module | None = None, data: DataSplits | None = None,
          argv: list[str] | None = None, spec: ModelSpec | None = None, meta_extra: dict | None = None,
          teacher: Teacher | None = None) -> FitResult:
    """Train `cfg`'s model (or `model`) on `cfg`'s data (or `data`); rank 0 writes the run folder.

    On one process, or as one rank of several under torchrun (the environment says which).
    `spec` names what a handed-in `model` is built from, and `meta_extra` adds to meta.json: a
    pruned model is fine-tuned this way and reloads from its run folder. `teacher` distils.
    """
    dist = distributed.from_env()
    scale.check_settings(dist, batch_size=cfg.batch_size, device=cfg.device, on_nonfinite=cfg.on_nonfinite)
    return scale.guarded(dist, cfg.dist.timeout_s,
                         lambda: _train(cfg, model, data, argv, dist, spec=spec, meta_extra=meta_extra,
                                        teacher=teacher))


def _train(cfg: TrainConfig, model: nn.Module | None, data: DataSplits | None, argv: list[str] | None,
           dist: DistInfo, *, spec: ModelSpec | None, meta_extra: dict | None, teacher: Teacher | None
           ) -> FitResult:
    seed_everything(cfg.seed, cfg.deterministic)
    data_name_registered = data is None
    if data is None:
        from tocha.data import load_data

        data = load_data(cfg.data.name, root=cfg.data.root, val_fraction=cfg.data.val_fraction, seed=cfg.seed,
                         image_size=None if cfg.image_size == AUTO else cfg.image_size,
                         channels=cfg.data.channels, download=cfg.data.download, on_bad_file=cfg.data.on_bad_file)
    from tocha.data.resident import decide, materialise

    hw = plan(cfg.device, cfg.precision, cfg.data.workers, cfg.threads, file_data=data.train.inputs is None)
    device = torch.device(hw.device)
    residency = decide(data, cfg.data.resident, device)
    if residency.resident and data.train.inputs is None:
        data = materialise(data, workers=hw.workers)
    hw = plan(cfg.device, cfg.precision, cfg.data.workers, cfg.threads, file_data=not residency.resident)
    torch.set_num_threads(hw.threads)
    hw, device = scale.rank_device(hw, dist, threads_auto=cfg.threads == AUTO)
    if dist.world_size > 1:
        backend = distributed.choose_backend(cfg.dist.backend, device.type)
        distributed.init(dist, backend, cfg.dist.timeout_s, device)
    cuda_notes = configure_cuda(cfg.deterministic) if device.type == "cuda" else []

    dropout = DEFAULT_DROPOUT.get(cfg.model.name, 0.0) if cfg.model.dropout == AUTO else cfg.model.dropout
    spec = spec or ModelSpec(cfg.model.name if model is None else type(model).__name__, data.in_channels,
                             len(data.classes), data.image_size, tuple(cfg.model.hidden), cfg.model.width, dropout)
    weight_notes: list[str] = []
    if model is None:
        model = build_model(spec)
        if cfg.model.weights:
            weight_notes = load_pretrained(model, cfg.model.weights, classes=tuple(data.classes))
    else:
        check_input_size(model, spec)  # a model handed to tocha.fit: check it against the data too
    # channels_last suits the convolution kernels (oneDNN on CPU: 1.7x for the default CNN here; cuDNN on GPU).
    channels_last = data.image_size > 0 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model, sync_note = scale.sync_batchnorm(model, cfg.dist.sync_batchnorm, dist, device)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    mode = default_mode(cfg.monitor.partition(".")[2]) if cfg.mode == AUTO else cfg.mode
    freezing = Freezing(model, cfg.model.freeze, cfg.unfreeze_at_epoch, pretrained=bool(cfg.model.weights))

    # Rank 0 alone owns the run folder; the others get its name and the checkpoint to resume from.
    writes_run = cfg.out is not None or argv is not None

    def open_run_folder() -> tuple[str | None, resume.Loaded | None]:
        out = cfg.out or rf.default_run_name(cfg.data.name, cfg.model.name)
        rf.lock_run_dir(Path(out))
        loaded = find_resume_point(Path(out)) if cfg.resume == "auto" else None
        # resume=auto without a usable checkpoint starts over in the same folder.
        if not loaded:
            rf.prepare_run_dir(out, overwrite=cfg.overwrite or cfg.resume == "auto")
        return out, loaded

    out, loaded = scale.from_rank0(dist, open_run_folder) if writes_run else (None, None)
    run_dir = Path(out) if out is not None and dist.is_main else None
    augment = cfg.data.augment
    if augment == AUTO:
        from tocha.data import DEFAULT_AUGMENT

        # Augmentation helps models that can overfit; it only slows a small MLP down.
        augment = list(DEFAULT_AUGMENT.get(cfg.data.name, ())) if data_name_registered and spec.name != "mlp" else []
    tensorboard = cfg.log.tensorboard
    if tensorboard == AUTO:
        import importlib.util

        tensorboard = importlib.util.find_spec("tensorboard") is not None
    transform = DeviceTransform(data.mean, data.std, augment=augment, crop_padding=cfg.data.crop_padding,
                                device=device, seed=cfg.seed, channels_last=channels_last)
    per_process = cfg.batch_size // dist.world_size   # batch_size is global (recipes/scale.py)
    batches = {name: make_batches(split, per_process, device=device, transform=transform, train=name == "train",
                                  hw=hw, seed=cfg.seed, dist=dist, resident=residency.resident,
                                  prepare_once=residency.prepare_once)
               for name, split in (("train", data.train), ("val", data.val), ("test", data.test)) if split is not None}

    loss_fn, correct_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), top1_correct
    if teacher is not None:  # distillation: the targets carry the teacher's logits; the loop is the same
        from tocha.recipes.distill import check_compatible

        check_compatible(teacher.meta, data)
        batches["train"] = teacher.wrap(batches["train"])
        loss_fn, correct_fn = teacher.loss_fn(cfg.label_smoothing), teacher.correct_fn
    if freezing.active:  # transfer learning: frozen parameters are set as each epoch starts
        batches["train"] = freezing.wrap(batches["train"])
    hw, step_model, compile_notes = tune(model, data.train, cfg, transform, device, hw, batch_size=per_process,
                                         dist=dist)
    resolved = resolved_config(cfg, hw, data, mode, out, augment, tensorboard, spec)
    resolved = dataclasses.replace(resolved, lr_backbone=freezing.backbone_lr(resolved.lr, cfg.lr_backbone))

    if dist.is_main:
        log.info("data       %s: %d train / %d val / %s test samples, %d classes, from %s", cfg.data.name,
                 len(data.train), len(data.val) if data.val else 0, len(data.test) if data.test else "no",
                 len(data.classes), data.source)
        for note in data.notes:
            log.info("note       %s", note)
        log.info("batches    %s", residency.reason)
        for line in hw.lines():
            log.info("%s", line)
        for note in cuda_notes + compile_notes:
            log.info("speed      %s", note)
        if dist.world_size > 1:
            log.info("processes  %d (DistributedDataParallel, %s backend, rank 0 of %d writes; collectives time "
                     "out after %g s)", dist.world_size, backend, dist.world_size, cfg.dist.timeout_s)
        log.info("%s", scale.batch_rule(cfg.batch_size, cfg.grad_accum_steps, resolved.lr, dist.world_size))
        if sync_note:
            log.info("model      %s", sync_note)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model      %s: %s parameters", spec.name, f"{n_params:,}")
        for note in weight_notes:
            log.info("weights    %s", note)
        if freezing.active:
            log.info("freeze     %s", freezing.describe())
        if resolved.lr_backbone != resolved.lr and freezing.head:
            log.info("lr         %g for the head '%s', %g for the rest (lr_backbone)", resolved.lr, freezing.head,
                     resolved.lr_backbone)
        if run_dir is not None:
            log.info("run folder %s", run_dir)
        if loaded:
            log.info("resume     from %s (epoch %d, step %d)", loaded.path, loaded.state["position"]["epoch"],
                     loaded.state["position"]["step"])

    meta = {"model": spec.to_dict(), "classes": list(data.classes), "mean": data.mean, "std": data.std,
            "in_channels": data.in_channels, "image_size": data.image_size, **(meta_extra or {})}
    if run_dir is not None:
        write_run_start(run_dir, resolved, meta, hw, argv, world_size=dist.world_size)

    optimizer = build_optimizer(model, cfg.optimizer, lr=resolved.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None,
                                lr_of=freezing.lr_of(resolved.lr, resolved.lr_backbone))
    steps_per_epoch = math.ceil(len(batches["train"]) / cfg.grad_accum_steps)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps=cfg.epochs * steps_per_epoch,
                                steps_per_epoch=steps_per_epoch,
                                warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                                step_epochs=cfg.step_epochs, step_gamma=cfg.step_gamma)
    classes = data.classes

    def evaluate() -> dict:
        loss, metrics = evaluate_split(model, batches["val"], classes=classes, device=device,
                                       precision=hw.precision, top_k=cfg.top_k, dist=dist, n_samples=len(data.val))
        return {"val.loss": loss, **metrics.flat("val")}

    metrics_log = rf.MetricsLog(run_dir, csv_enabled=cfg.log.csv, tensorboard=tensorboard) if run_dir else None
    best_state: dict[str, torch.Tensor] | None = None

    slow_input_warned = False

    def on_eval_end(record: dict, improved: bool) -> None:
        nonlocal best_state, slow_input_warned
        if record.get("data_wait_share", 0) > DATA_WAIT_WARN and not slow_input_warned and dist.is_main:
            slow_input_warned = True
            log.warning("input bound: the step waited for the DataLoader %.0f%% of the epoch; try more "
                        "data.workers (now %d), a smaller image_size, or data.resident=true if it fits",
                        100 * record["data_wait_share"], hw.workers)
        if metrics_log:
            metrics_log.write(record)
        if run_dir is not None:
            write_or_explain(lambda: save_weights(model, run_dir / rf.LAST_WEIGHTS), "the last weights", run_dir)
            if improved:
                write_or_explain(lambda: save_weights(model, run_dir / rf.BEST_WEIGHTS), "the best weights", run_dir)
        elif improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    generators = {"augment": transform.generator}

    def on_checkpoint(position: dict) -> None:
        if run_dir is None:  # every rank computes the position (a collective); rank 0 writes it
            return
        state = {"format": resume.FORMAT, "position": position, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler else None, "rng": resume.rng_state(generators)}
        write_or_explain(lambda: resume.write(run_dir / "checkpoints", position["step"], model, state,
                                              keep=cfg.checkpoint.keep), "a checkpoint", run_dir)

    start = None
    if loaded:
        start = restore(loaded, model, optimizer, scheduler, generators)
        if metrics_log:
            metrics_log.restart(start["history"])
    progress = Progress(epochs=cfg.epochs, steps_per_epoch=len(batches["train"]),
                        enabled=dist.is_main and cfg.log.progress)
    signals = StopSignals(announce=dist.is_main) if writes_run else None
    with training_guard(run_dir, resolved, signals, metrics_log, world_size=dist.world_size):
        result = train_loop(
            step_model, batches["train"], device=device, optimizer=optimizer, scheduler=scheduler, epochs=cfg.epochs,
            loss_fn=loss_fn, correct_fn=correct_fn, precision=hw.precision,
            grad_accum_steps=cfg.grad_accum_steps, grad_clip=cfg.grad_clip, log_every=cfg.log_every,
            eval_every_steps=cfg.eval_every_steps, evaluate=evaluate if "val" in batches else None,
            monitor=cfg.monitor, mode=mode, on_log=metrics_log.write if metrics_log else None,
            on_eval_end=on_eval_end, progress=progress, dist=dist, start=start,
            checkpoint_every=cfg.checkpoint.every_steps, on_checkpoint=on_checkpoint if writes_run else None,
            stop_signal=signals.pending if signals else None, patience=cfg.early_stop.patience,
            min_delta=cfg.early_stop.min_delta, skip_nonfinite=cfg.on_nonfinite == "skip")

    # Final numbers come from the best checkpoint, which is what `tocha eval` and `predict` use.
    load_best(model, run_dir, best_state)
    val_metrics = test_metrics = None
    summary: dict = {"best": result.best, "epochs": cfg.epochs, "steps": result.steps, "device": hw.device,
                     "precision": hw.precision}
    if result.stopped_early:
        summary["early_stop"] = result.stopped_early
        log.info("early stop %s", result.stopped_early)
    if result.skipped_steps:
        summary["skipped_nonfinite_batches"] = result.skipped_steps
        log.warning("skipped %d batch(es) with a NaN/Inf loss (on_nonfinite=skip)", result.skipped_steps)
    if "val" in batches:
        loss, val_metrics = evaluate_split(model, batches["val"], classes=classes, device=device,
                                           precision=hw.precision, top_k=cfg.top_k, dist=dist,
                                           n_samples=len(data.val))
        summary["val"] = {"val.loss": loss, **val_metrics.flat("val")}
    if "test" in batches:
        loss, test_metrics = evaluate_split(model, batches["test"], classes=classes, device=device,
                                            precision=hw.precision, top_k=cfg.top_k, dist=dist,
                                            n_samples=len(data.test))
        summary["test"] = {"test.loss": loss, **test_metrics.flat("test")}
    memory, memory_kind = peak_memory_mb(device)
    summary.update(wall_seconds=round(result.wall_seconds, 3), train_seconds=round(result.train_seconds, 3),
                   train_samples_per_second=round(result.train_samples / max(result.train_seconds, 1e-9), 1),
                   world_size=dist.world_size, batch_size_global=cfg.batch_size, batch_size_per_process=per_process,
                   peak_memory_mb=round(memory, 1), peak_memory_kind=memory_kind)

    if run_dir is not None:
        rf.write_json(run_dir / rf.SUMMARY, summary)
        if test_metrics is not None:
            rf.write_json(run_dir / "eval-test.json", {"split": "test", "checkpoint": "best",
                                                       "loss": summary["test"]["test.loss"],
                                                       **test_metrics.to_dict()})
        from tocha.reports.html import write_report

        write_report(run_dir, title=f"tocha run {run_dir.name}", summary=summary, config_text=dump_yaml(resolved),
                     test_metrics=test_metrics, val_metrics=val_metrics, history=list(result.history))
    return FitResult(model, run_dir, result.best, result.history, val_metrics, test_metrics, summary)
