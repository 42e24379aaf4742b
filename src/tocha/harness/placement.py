"""Where a run executes, decided once before anything is built: device, rank and world size,
precision, threads, DataLoader workers and the batch rule. Printed with the reasons, passed down."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from tocha.engine import distributed
from tocha.engine.distributed import DistInfo
from tocha.hardware import HardwarePlan, plan
from tocha.harness import scale


@dataclass(frozen=True)
class Placement:
    hw: HardwarePlan  # device, precision, workers, pin_memory, threads, with reasons
    device: torch.device  # this rank's device (cuda:LOCAL_RANK on several GPUs)
    dist: DistInfo
    batch_size: int  # global: samples per forward pass over all ranks
    backend: str | None = None  # process-group backend on several processes
    notes: tuple[str, ...] = ()  # speed settings made (TF32, cuDNN benchmark)

    @property
    def batch_size_per_process(self) -> int:
        return self.batch_size // self.dist.world_size

    @property
    def precision(self) -> str:
        return self.hw.precision

    def in_memory(self, reason: str) -> Placement:
        """The data turned out to be held in memory: no loader workers, no pinned buffers."""
        reasons = {**self.hw.reasons, "workers": reason, "pin_memory": "only useful for loader batches"}
        if self.hw.reasons.get("workers") == "set by the user":
            return self
        return dataclasses.replace(self, hw=dataclasses.replace(self.hw, workers=0, pin_memory=False, reasons=reasons))

    def loader_workers(self, workers: int, reason: str) -> Placement:
        """The user's own DataLoader makes the batches, with its `workers`."""
        reasons = {**self.hw.reasons, "workers": reason}
        return dataclasses.replace(self, hw=dataclasses.replace(self.hw, workers=workers, reasons=reasons))

    def with_threads(self, threads: int, why: str) -> Placement:
        torch.set_num_threads(threads)
        hw = dataclasses.replace(self.hw, threads=threads, reasons={**self.hw.reasons, "threads": why})
        return dataclasses.replace(self, hw=hw)


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def configure_cuda(deterministic: bool) -> tuple[str, ...]:
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
    return tuple(notes)


def resolve(
    *,
    device: str,
    precision: str,
    workers: int | str,
    threads: int | str,
    batch_size: int,
    deterministic: bool,
    backend: str,
    timeout_s: float,
    dist: DistInfo,
) -> Placement:
    """One placement for this rank; on several processes the process group is started here."""
    hw = plan(device, precision, workers, threads, file_data=True)
    torch.set_num_threads(hw.threads)
    hw, dev = scale.rank_device(hw, dist, threads_auto=threads == "auto")
    chosen_backend = None
    if dist.world_size > 1:
        chosen_backend = distributed.choose_backend(backend, dev.type)
        distributed.init(dist, chosen_backend, timeout_s, dev)
    notes = configure_cuda(deterministic) if dev.type == "cuda" else ()
    return Placement(hw, dev, dist, batch_size, chosen_backend, notes)
