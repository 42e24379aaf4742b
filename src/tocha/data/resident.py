"""Whether the data lives as tensors on the training device, and materialising datasets that fit.

`data.resident=auto` keeps in-memory data resident and decodes a file dataset once into one
uint8 tensor when every split fits the memory budget and its items are the same on every read
(a Dataset with random transforms inside must keep going through the DataLoader, or its
augmentation would be frozen). `true` insists (and says why it cannot), `false` always uses the
DataLoader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from tocha.data.types import DataSplits, Split
from tocha.errors import UserError

HOST_SHARE = 0.5  # of the host memory available now
CUDA_SHARE = 0.4  # of the free device memory: the model, activations and optimizer need the rest


@dataclass(frozen=True)
class Residency:
    resident: bool
    prepare_once: bool  # room for a normalised float copy too (steps then only slice)
    reason: str


def available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30  # unknown: assume a small machine


def memory_budget(device: torch.device) -> tuple[int, str]:
    """Bytes the resident data may take, and how that was decided."""
    host = int(available_host_bytes() * HOST_SHARE)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        gpu = int(free * CUDA_SHARE)
        return min(host, gpu), (
            f"{CUDA_SHARE:.0%} of free {device.type} memory, {HOST_SHARE:.0%} of available host memory"
        )
    return host, f"{HOST_SHARE:.0%} of available host memory"


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:,.0f} MB"


def _item_bytes(split: Split) -> tuple[int, int]:
    """(stored bytes, float32 bytes) of one example."""
    if split.inputs is not None:
        x = split.inputs[0]
    else:
        x = torch.as_tensor(split.dataset[0][0])
    return x.numel() * x.element_size(), x.numel() * 4


def _repeatable(dataset) -> bool:
    a, b = dataset[0][0], dataset[0][0]
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)


def loader_as_given(split: Split) -> str | None:
    """Why a split's own DataLoader must make its batches (a collate_fn or sampler of its own), or None."""
    loader = split.loader
    if loader is None:
        return None
    from tocha.data.types import default_sampling

    if loader.collate_fn is not torch.utils.data.default_collate:
        name = getattr(loader.collate_fn, "__name__", type(loader.collate_fn).__name__)
        return f"its collate_fn ({name}) makes the batches"
    if not default_sampling(loader):
        name = type(loader.batch_sampler if loader.batch_size is None else loader.sampler).__name__
        return f"its sampler ({name}) chooses the order"
    return None


def decide(data: DataSplits, requested: bool | str, device: torch.device) -> Residency:
    splits = [s for s in (data.train, data.val, data.test) if s is not None]
    as_given = [why for why in map(loader_as_given, splits) if why]
    if as_given:
        if requested is True:
            raise UserError(
                f"data.resident=true but the DataLoader given as data cannot be held in memory: {as_given[0]}",
                where="config key data.resident",
                fix="use data.resident=auto, or pass the loader's dataset instead of the loader",
            )
        return Residency(
            False, False, f"the DataLoader as given, not held in memory: {as_given[0]}; its workers are used"
        )
    stored = sum(_item_bytes(s)[0] * len(s) for s in splits)
    as_float = sum(_item_bytes(s)[1] * len(s) for s in splits)
    budget, how = memory_budget(device)
    in_memory = all(s.inputs is not None for s in splits)
    if requested is False:
        return Residency(False, False, "data.resident=false: batches come from a DataLoader")
    fits = stored <= budget
    prepare_once = as_float <= budget
    where = f"on {device.type}" if device.type != "cpu" else "in host memory"
    size = f"{mb(stored)} {where}" + (
        ", normalised once to float32"
        if prepare_once
        else f", normalised per batch ({mb(as_float)} as float32 would not fit)"
    )
    if in_memory and (fits or device.type == "cpu"):
        return Residency(True, prepare_once, f"resident tensors, {size}")
    files = [s.dataset for s in splits if s.inputs is None]
    if not fits:
        why = f"the data needs {mb(stored)}, over the budget of {mb(budget)} ({how})"
        if requested is True:
            raise UserError(
                f"data.resident=true but {why}",
                where="config key data.resident",
                fix="use data.resident=auto (falls back to the DataLoader), a smaller image_size, "
                "or a machine with more memory",
            )
        return Residency(False, False, f"DataLoader: {why}")
    if requested == "auto" and not all(_repeatable(ds) for ds in files):
        return Residency(
            False,
            False,
            "DataLoader: the dataset's items differ between reads (random transforms?), "
            "so decoding it once would freeze them",
        )
    return Residency(True, prepare_once, f"resident tensors, decoded once: {size}")


def materialise(data: DataSplits, workers: int) -> DataSplits:
    """Every file-backed split decoded once into one tensor (workers decode in parallel)."""

    def load(split: Split | None) -> Split | None:
        if split is None or split.inputs is not None:
            return split
        loader = torch.utils.data.DataLoader(split.dataset, batch_size=256, num_workers=workers)
        first = torch.as_tensor(split.dataset[0][0])
        out = torch.empty((len(split), *first.shape), dtype=first.dtype)
        start = 0
        for x, _ in loader:
            out[start : start + len(x)] = x
            start += len(x)
        return Split(labels=split.labels, inputs=out)

    return replace(data, train=load(data.train), val=load(data.val), test=load(data.test))
