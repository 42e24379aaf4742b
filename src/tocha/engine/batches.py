"""Batches on the training device: tensor-resident when the data is in memory, DataLoader otherwise.

Both paths hand the loop ``(x, y)`` already on the device; normalisation and augmentation run
batched on the device in :class:`DeviceTransform`, the same code for both paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class DeviceTransform:
    """uint8 -> float in [0, 1], per-channel normalisation, then (training only) random flips/crops."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, *, augment: Sequence[str] = (),
                 crop_padding: int = 2, device: torch.device, seed: int = 0, channels_last: bool = False) -> None:
        self.mean = None if mean is None else torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.augment = tuple(augment)
        self.crop_padding = crop_padding
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.mean is not None and x.ndim == 4:
            x = (x - self.mean) / self.std
        if train and x.ndim == 4:
            if "flip" in self.augment:
                flip = torch.rand(x.shape[0], device=x.device, generator=self.generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            if "crop" in self.augment and self.crop_padding > 0:
                x = self._random_crop(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Shift each image by up to `crop_padding` pixels, filling with zeros (the mean after normalising)."""
        n, _, h, w = x.shape
        p = self.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        shifts = torch.randint(0, 2 * p + 1, (2, n), device=x.device, generator=self.generator)
        rows = (torch.arange(h, device=x.device).view(1, h) + shifts[0].view(n, 1)).view(n, 1, h, 1)
        cols = (torch.arange(w, device=x.device).view(1, w) + shifts[1].view(n, 1)).view(n, 1, 1, w)
        padded = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * p))
        return padded.gather(3, cols.expand(n, x.shape[1], h, w))


class ResidentBatches:
    """The whole split held once on the device; an epoch is a permutation, a batch an index slice."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, *, device: torch.device,
                 transform: DeviceTransform, train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.x = inputs.to(device)
        self.y = labels.to(device)
        self.batch_size, self.transform, self.train = batch_size, transform, train
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = self.y.shape[0]
        if not self.train:
            order = torch.arange(n)
        else:
            # Seeded by (seed, epoch) on the CPU, so the order is the same on every device and after a resume.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return order[self.rank::self.world_size].to(self.device)

    def __len__(self) -> int:
        n = len(range(self.rank, self.y.shape[0], self.world_size))
        batches = math.ceil(n / self.batch_size)
        # A last training batch of one sample breaks BatchNorm; drop it rather than crash.
        return batches - 1 if self.train and n % self.batch_size == 1 and batches > 1 else batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.transform(self.x[idx], self.train), self.y[idx]


class _EpochSampler(torch.utils.data.Sampler):
    """A shuffling sampler whose order depends only on (seed, epoch), like ResidentBatches."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class LoaderBatches:
    """File-backed data through a DataLoader: decode/resize in workers, pinned async copies on CUDA."""

    def __init__(self, dataset, batch_size: int, *, device: torch.device, transform: DeviceTransform, train: bool,
                 workers: int = 0, pin_memory: bool = False, seed: int = 0) -> None:
        self.sampler = _EpochSampler(len(dataset), seed, shuffle=train)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers, pin_memory=pin_memory,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            drop_last=train and len(dataset) % batch_size == 1 and len(dataset) > batch_size)
        self.device, self.transform, self.train = device, transform, train
        self.non_blocking = pin_memory

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=self.non_blocking)
            y = y.to(self.device, non_blocking=self.non_blocking)
            yield self.transform(x, self.train), y
