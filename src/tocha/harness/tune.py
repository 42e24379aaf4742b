"""Choices measured on the built model: the CPU thread count, torch.compile with a trial step, and
the epochs that fit a time budget."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from tocha.engine.threads import choose_threads, training_step
from tocha.hardware import usable_cpus

CALIBRATION_STEPS, CALIBRATION_WARMUP = 40, 3  # timed optimizer steps, after untimed ones (kernel set-up)


def pick_threads(model: nn.Module, probe, loss_fn, *, deterministic: bool) -> tuple[int, str]:
    """Measured (the fastest of 1, 2, 4, ...), or with deterministic=true a fixed rule: a measurement
    depends on the machine's load, and another thread count changes the results in the last bits."""
    cpus = usable_cpus()
    if deterministic:
        return cpus, f"deterministic=true: every one of the {cpus} usable CPU cores (a fixed rule, not measured)"
    x, y = probe
    return choose_threads(training_step(model, x, y, loss_fn), cpus)


def compile_model(model: nn.Module, probe, loss_fn) -> tuple[nn.Module, str]:
    """torch.compile with a trial forward+backward; the eager model and the reason when that fails."""
    x, y = probe
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # the trial must not move BatchNorm stats
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        compiled = torch.compile(model)
        with torch.random.fork_rng(devices=devices):  # the trial's dropout leaves the run's RNG alone
            loss_fn(compiled(x), y).backward()
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


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def seconds_per_step(stepper, batches, accum: int) -> float:
    """Median seconds of one optimizer step of `stepper`, drawing its batch included, over the first
    real batches of epoch 0 after CALIBRATION_WARMUP untimed steps (fewer when the epoch is that
    short). The median: a few steps slowed by something else on the machine do not move it. The
    caller gives a stepper of a copy of the model and restores the RNGs: this draws batches like
    epoch 0 does."""
    from tocha.engine.loop import groups
    from tocha.engine.state import LoopState

    state = LoopState()
    device = next((p.device for p in stepper.model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n_steps = -(-len(batches) // accum)
    warmup = min(CALIBRATION_WARMUP, n_steps - 1)
    batches.set_epoch(0)
    seconds: list[float] = []
    clock = time.perf_counter()
    for i, (_, group) in enumerate(groups(batches, 0, accum)):
        if i >= warmup + CALIBRATION_STEPS:
            break
        stepper.step(group, state)
        sync()
        now = time.perf_counter()
        if i >= warmup:
            seconds.append(now - clock)
        clock = now
    return statistics.median(seconds)
