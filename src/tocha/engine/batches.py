"""Batches on the training device: tensor-resident when the data is in memory, DataLoader otherwise.

Both paths hand the loop ``(x, y)`` already on the device and give the same batches for the same
seed: the order comes from one (seed, epoch) permutation and :class:`DeviceTransform` does the
normalisation and augmentation, batched on the device, for both.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence

import torch

from tocha.engine.distributed import shard


class DeviceTransform:
    """uint8 -> float in [0, 1], per-channel normalisation, then (training only) random flips/crops/erasing.

    `prepare` is the deterministic part (it can run once over a whole resident dataset), `augment`
    the random part (every training batch).
    """

    def __init__(
        self,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        *,
        augment: Sequence[str] = (),
        crop_padding: int = 2,
        device: torch.device,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.mean = None if mean is None else torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.augments = tuple(a for a in augment if a != "crop" or crop_padding > 0)
        self.crop_padding = crop_padding
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = self.prepare(x)
        return self.augment(x) if train and self.augments else x

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if x.ndim != 4:
            return x  # flat features: used as they are
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return x
        if "flip" in self.augments:
            flip = torch.rand(x.shape[0], device=x.device, generator=self.generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if "crop" in self.augments:
            x = self._random_crop(x)
        if "erase" in self.augments:
            x = self._random_erase(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

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

    def _random_erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing (Zhong et al., 2017), a box per image: with probability ERASE_P, a box of
        ERASE_SCALE of the image's area and an aspect ratio in ERASE_RATIO (log-uniform) is set to 0,
        the mean after normalising. torchvision's RandomErasing has these defaults but draws one box per
        call, so a batch would share it; here every image draws its own, in one batched mask."""
        n, _, h, w = x.shape
        u = torch.rand(5, n, device=x.device, generator=self.generator)
        area = h * w * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[0])
        log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
        bh = torch.sqrt(area * aspect).round().clamp(1, h)
        bw = torch.sqrt(area / aspect).round().clamp(1, w)
        top = (u[2] * (h - bh + 1)).floor()
        left = (u[3] * (w - bw + 1)).floor()
        rows = torch.arange(h, device=x.device).view(1, h)
        cols = torch.arange(w, device=x.device).view(1, w)
        in_rows = (rows >= top.view(n, 1)) & (rows < (top + bh).view(n, 1))
        in_cols = (cols >= left.view(n, 1)) & (cols < (left + bw).view(n, 1))
        box = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w) & (u[4] < ERASE_P).view(n, 1, 1, 1)
        return x.masked_fill(box, 0.0)


ERASE_P = 0.5
ERASE_SCALE = (0.02, 0.33)  # share of the image's area
ERASE_RATIO = (0.3, 3.3)  # box height / width


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch, from (seed, epoch) only: the same on every device and after a resume."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def drops_last(n: int, batch_size: int, train: bool) -> bool:
    """A last training batch of one sample breaks BatchNorm: drop it rather than crash."""
    return train and n % batch_size == 1 and n > batch_size


class ResidentBatches:
    """The whole split held once on the device; an epoch is a permutation, a batch an index slice.

    With `prepare_once` the deterministic transform (uint8 -> normalised float, channels_last) runs
    once here, so a step only slices (and augments); otherwise it runs per batch on the stored uint8.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device,
        transform: DeviceTransform,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prepare_once: bool = True,
    ) -> None:
        self.prepared = prepare_once
        self.x = prepare_all(inputs, transform, device) if prepare_once else inputs.to(device)
        self.y = labels.to(device)
        self.batch_size, self.transform, self.train = batch_size, transform, train
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.wait_seconds = 0.0  # slicing is part of the step; nothing to wait for
        self.first = 0

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """The next iteration yields `epoch`'s batches from `first_batch` on (a mid-epoch resume)."""
        self.epoch, self.first = epoch, first_batch

    def _n(self) -> int:
        """Samples of this rank per epoch: the same on every rank (`shard` pads by wrapping around)."""
        return -(-self.y.shape[0] // self.world_size)

    def __len__(self) -> int:
        n = self._n()
        return math.ceil(n / self.batch_size) - drops_last(n, self.batch_size, self.train)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = shard(epoch_order(self.y.shape[0], self.seed, self.epoch, self.train), self.rank, self.world_size)
        order = order.to(self.device)
        x, y, b = self.x, self.y, self.batch_size
        augment = self.train and bool(self.transform.augments)
        first, self.first = self.first, 0
        for i in range(first, len(self)):
            idx = order[i * b : (i + 1) * b]
            xb = x.index_select(0, idx)
            if not self.prepared:
                xb = self.transform.prepare(xb)
            yield (self.transform.augment(xb) if augment else xb), y.index_select(0, idx)


def prepare_all(
    inputs: torch.Tensor, transform: DeviceTransform, device: torch.device, chunk: int = 8192
) -> torch.Tensor:
    """`transform.prepare` over a whole split, in chunks so the float copy is the only big allocation."""
    first = transform.prepare(inputs[:1].to(device))
    out = torch.empty((len(inputs), *first.shape[1:]), dtype=first.dtype, device=device)
    if first.ndim == 4 and transform.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    for start in range(0, len(inputs), chunk):
        out[start : start + chunk] = transform.prepare(inputs[start : start + chunk].to(device))
    return out


class TensorItems(torch.utils.data.Dataset):
    """In-memory tensors seen as a Dataset, for the DataLoader path (`data.resident=false`)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.labels[i]


class _EpochSampler(torch.utils.data.Sampler):
    """The DataLoader's order: `epoch_order` sharded by rank, exactly as ResidentBatches uses it.

    It plays DistributedSampler's part (set_epoch every epoch, padded equal shares) but keeps
    tocha's own permutation, so both data paths give the same batches.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle, self.epoch, self.skip = n, seed, shuffle, 0, 0
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return -(-self.n // self.world_size) - self.skip

    def __iter__(self):
        order = shard(epoch_order(self.n, self.seed, self.epoch, self.shuffle), self.rank, self.world_size)
        return iter(order[self.skip :].tolist())


class LoaderBatches:
    """File-backed data through a DataLoader: decode/resize in workers, pinned async copies on CUDA.

    `like` is a user's DataLoader over `dataset`: its collate_fn, workers and worker_init_fn are
    kept. Its order is tocha's seeded one when it used PyTorch's plain sampler (so a resume continues
    exactly and processes shard alike), and its own sampler or batch_sampler otherwise.
    `wait_seconds` is the time the last epoch spent blocked on the loader: the input bottleneck.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        device: torch.device,
        transform: DeviceTransform,
        train: bool,
        workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        like: torch.utils.data.DataLoader | None = None,
    ) -> None:
        from tocha.data.types import default_sampling

        self.sampler = _EpochSampler(len(dataset), seed, shuffle=train, rank=rank, world_size=world_size)
        self.own_order = like is not None and not default_sampling(like)  # the user's sampler decides
        if self.own_order and world_size > 1:
            from tocha.errors import UserError

            raise UserError(
                f"a DataLoader with its own sampler ({type(like.sampler).__name__}) cannot be sharded "
                f"over {world_size} processes",
                where="the DataLoader given as data",
                fix="pass a DataLoader with the default sampler (tocha shards it), or run one process",
            )
        options = {}
        if like is not None:
            workers = like.num_workers
            options = {"collate_fn": like.collate_fn, "worker_init_fn": like.worker_init_fn, "timeout": like.timeout}
        if self.own_order and like.batch_size is None:  # a batch_sampler makes the batches
            options["batch_sampler"] = like.batch_sampler
        elif self.own_order:
            options.update(batch_size=like.batch_size, sampler=like.sampler, drop_last=like.drop_last)
        else:
            options.update(
                batch_size=batch_size, sampler=self.sampler, drop_last=drops_last(len(self.sampler), batch_size, train)
            )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: worker seeds are drawn from it, not from the global RNG that dropout uses,
            # so both data paths leave the model's random numbers alone.
            generator=torch.Generator().manual_seed(seed),
            **options,
        )
        self.device, self.transform, self.train = device, transform, train
        self.non_blocking = pin_memory
        self.wait_seconds = 0.0
        self.batch_size, self.first_batch = batch_size, 0

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.sampler.epoch = epoch
        self.first_batch = first_batch
        if self.own_order and hasattr(self.loader.sampler, "set_epoch"):  # e.g. a DistributedSampler
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches in a whole epoch."""
        skip, self.sampler.skip = self.sampler.skip, 0
        n = len(self.loader)
        self.sampler.skip = skip
        return n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.wait_seconds = 0.0
        skip_batches = self.first_batch if self.own_order else 0  # its own order: resume skips whole batches
        if not self.own_order:
            self.sampler.skip = self.first_batch * self.batch_size
        self.first_batch = 0
        try:
            batches = itertools.islice(iter(self.loader), skip_batches, None)
            while True:
                t = time.perf_counter()
                try:
                    x, y = next(batches)
                except StopIteration:
                    return
                finally:
                    self.wait_seconds += time.perf_counter() - t
                x = x.to(self.device, non_blocking=self.non_blocking)
                y = y.to(self.device, non_blocking=self.non_blocking)
                yield self.transform(x, self.train), y
        finally:
            self.sampler.skip = 0


def make_batches(
    split,
    batch_size: int,
    *,
    device: torch.device,
    transform: DeviceTransform,
    train: bool,
    workers: int,
    pin_memory: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    resident: bool = True,
    prepare_once: bool = False,
):
    """ResidentBatches for a split held in memory (`split.inputs`, `split.labels`) unless `resident` is
    False, a DataLoader over `split.dataset` otherwise; `batch_size` per process, sharded over the ranks."""
    if split.inputs is not None and resident:
        return ResidentBatches(
            split.inputs,
            split.labels,
            batch_size,
            device=device,
            transform=transform,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            prepare_once=prepare_once,
        )
    dataset = split.dataset if split.inputs is None else TensorItems(split.inputs, split.labels)
    like = split.loader if split.inputs is None else None
    return LoaderBatches(
        dataset,
        batch_size,
        device=device,
        transform=transform,
        train=train,
        workers=workers,
        pin_memory=pin_memory,
        seed=seed,
        rank=rank,
        world_size=world_size,
        like=like,
    )


class Limited:
    """The first `n` batches of `batches` (limit_val_batches: a smoke test evaluates a little)."""

    def __init__(self, batches, n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return min(self.n, len(self.batches))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.islice(iter(self.batches), len(self))

    def __getattr__(self, name: str):  # set_epoch, wait_seconds, ... of the wrapped batches
        return getattr(self.batches, name)
