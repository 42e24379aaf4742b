"""What a recipe does differently on several processes (DDP under torchrun): the pieces `train` calls.

One rule for the batch: `batch_size` is global, the samples of one forward pass over all
processes together; each of N processes takes batch_size/N. Changing the number of processes
then changes neither the optimisation (same global batch, same steps per epoch, same schedule)
nor the learning rate, and a checkpoint continues on any number of processes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from tocha.engine import distributed
from tocha.engine.distributed import DistInfo
from tocha.errors import UserError
from tocha.hardware import HardwarePlan, usable_cpus

log = logging.getLogger("tocha")
T = TypeVar("T")


def check_settings(dist: DistInfo, *, batch_size: int, device: str, on_nonfinite: str) -> None:
    """Settings that cannot work on `dist.world_size` processes, found before any process group exists."""
    if dist.world_size == 1:
        return
    n = dist.world_size
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        raise UserError(
            f"batch_size={batch_size} cannot be split evenly over {n} processes",
            where="config key batch_size",
            fix=f"batch_size is the global batch (all processes together); use a multiple "
            f"of {n}, e.g. {upper}" + (f" or {lower}" if lower else ""),
        )
    kind, _, index = device.partition(":")
    if kind == "cuda" and index:
        raise UserError(
            f"device={device} names one GPU, but each of the {n} processes takes its own (cuda:LOCAL_RANK)",
            where="config key device",
            fix="use device=cuda or device=auto",
        )
    if kind == "mps":
        raise UserError(
            "several processes on MPS are not supported", where="config key device", fix="use device=cpu or one process"
        )
    if on_nonfinite == "skip":
        raise UserError(
            "on_nonfinite=skip is not supported on several processes (every rank would have to agree "
            "on every skipped batch)",
            where="config key on_nonfinite",
            fix="use on_nonfinite=stop",
        )


def rank_device(hw: HardwarePlan, dist: DistInfo, threads_auto: bool) -> tuple[HardwarePlan, torch.device]:
    """This rank's device (cuda:LOCAL_RANK on GPUs) and its share of the CPU cores."""
    device = torch.device(hw.device)
    if dist.world_size == 1:
        return hw, device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if dist.local_rank >= count:
            raise UserError(
                f"LOCAL_RANK={dist.local_rank} but this machine has {count} GPU(s)",
                where="torchrun --nproc-per-node / tocha train --nproc",
                fix=f"start at most {count} process(es) per machine",
            )
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if threads_auto:
        # The processes of one machine share its cores: measuring each alone would oversubscribe them.
        threads = max(1, usable_cpus() // dist.local_world_size)
        hw = dataclasses.replace(
            hw,
            threads=threads,
            reasons={
                **hw.reasons,
                "threads": f"{usable_cpus()} usable CPU cores shared by {dist.local_world_size} "
                "processes on this machine",
            },
        )
        torch.set_num_threads(threads)
    return hw, device


def batch_rule(batch_size: int, grad_accum_steps: int, lr: float, world_size: int) -> str:
    """The one line that says what the batch size means here and how the learning rate relates to it."""
    per_step = batch_size * grad_accum_steps
    parts = [f"{world_size} processes x {batch_size // world_size}"] if world_size > 1 else []
    if grad_accum_steps > 1:
        parts.append(f"{batch_size} per forward pass x {grad_accum_steps} accumulated")
    how = f" ({'; '.join(parts)})" if parts else ""
    # The rule stays, shorter: batch_size is global, and lr belongs to the samples of one optimizer step.
    return (
        f"batch      {per_step} samples per optimizer step{how}, lr {lr:g} for that batch "
        "(batch_size is global; scale lr with it)"
    )


def sync_batchnorm(model: nn.Module, wanted: bool, dist: DistInfo, device: torch.device) -> tuple[nn.Module, str]:
    """SyncBatchNorm layers when asked for on several GPU processes; the model and a note for the log."""
    if not wanted:
        return model, ""
    if dist.world_size == 1:
        return model, "dist.sync_batchnorm has no effect on one process"
    if device.type != "cuda":
        raise UserError(
            "dist.sync_batchnorm=true needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only",
            where="config key dist.sync_batchnorm",
            fix="set dist.sync_batchnorm=false on CPU",
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "SyncBatchNorm: batch statistics over all processes"


def wrap(model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (which keeps the weights: save and evaluate it, not the wrapper)."""
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def from_rank0(dist: DistInfo, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only (creating the run folder, finding a checkpoint) and hand its result,
    or its UserError, to every rank: the ranks then fail together instead of waiting for rank 0."""
    result, error = None, None
    if dist.is_main:
        try:
            result = work()
        except UserError as exc:
            error = exc
    result, error = distributed.broadcast_object((result, error), dist)
    if error is not None:
        raise error
    return result


def guarded(dist: DistInfo, timeout_s: float, run: Callable[[], T]) -> T:
    """`run()` on one of several ranks: a failed collective becomes a message naming the rank that failed
    and its error; this rank's own error is left in the store for the others to name."""
    if dist.world_size == 1:
        return run()
    try:
        result = run()
    except BaseException as exc:
        if distributed.is_collective_failure(exc):
            raise distributed.explain_failure(exc, dist, timeout_s) from None
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        distributed.publish_error(dist, text)
        raise
    distributed.shutdown()
    return result
