"""The values every data loader returns: a `Split` per role and `DataSplits` for the whole dataset.

torch is imported only for type checking so that `import tocha.data` stays cheap (`tocha --help`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import torch.utils.data


@dataclass(frozen=True)
class Split:
    """One role's examples: in-memory tensors (`inputs`) or a file-backed `dataset`, never both.

    In-memory images are uint8 [N,C,H,W] (0..255) or float [N,...], on the CPU. A dataset's item i
    is (uint8 [C,H,W] already resized, int label). `labels` is int64 [N] on the CPU either way, so
    splitting and class counts never have to touch the files.
    """

    labels: torch.Tensor
    inputs: torch.Tensor | None = None
    dataset: torch.utils.data.Dataset | None = None
    # A user's DataLoader over `dataset`: when the split is not held in memory, its batches are made
    # with the loader's own collate_fn, workers and (a custom) sampler; see tocha.api and engine.batches.
    loader: torch.utils.data.DataLoader | None = None

    def __post_init__(self) -> None:
        if (self.inputs is None) == (self.dataset is None):
            raise ValueError("a Split holds exactly one of inputs or dataset")
        if self.loader is not None and self.dataset is None:
            raise ValueError("a Split with a loader holds a dataset")
        if self.inputs is not None and len(self.inputs) != len(self.labels):
            raise ValueError(f"Split has {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None = None) -> torch.Tensor:
        """The first `n` inputs (all by default) as one tensor, decoding file-backed items."""
        import torch

        n = len(self) if n is None else min(n, len(self))
        if self.inputs is not None:
            return self.inputs[:n]
        if self.loader is not None:  # its collate_fn makes tensors of whatever the items are
            return self.loader.collate_fn([self.dataset[i] for i in range(n)])[0]
        return torch.stack([torch.as_tensor(self.dataset[i][0]) for i in range(n)])

    def subset(self, indices: torch.Tensor) -> Split:
        """The examples at `indices` (int64 positions), in that order."""
        if self.inputs is not None:
            return Split(labels=self.labels[indices], inputs=self.inputs[indices])
        from torch.utils.data import Subset

        if self.loader is not None and not default_sampling(self.loader):
            raise ValueError("a split batched by its own sampler cannot be subset")
        subset = Subset(self.dataset, indices.tolist())
        return Split(labels=self.labels[indices], dataset=subset, loader=self.loader)


@dataclass(frozen=True)
class DataSplits:
    """A dataset ready for training: train/val/test splits plus what a model and a report need."""

    train: Split
    val: Split | None
    test: Split | None  # the official test split, kept for `tocha eval`
    classes: tuple[str, ...]
    in_channels: int
    image_size: int  # square side in pixels; 0 for flat features
    mean: tuple[float, ...] | None  # per channel, [0,1] units, train split only; None = don't normalise
    std: tuple[float, ...] | None
    source: str  # where it was read from, for people
    notes: tuple[str, ...] = ()  # one-line messages the CLI prints

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_sampling(loader) -> bool:
    """True when `loader` draws its order with PyTorch's plain sequential or random sampler."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    return type(loader.sampler) in (RandomSampler, SequentialSampler) and type(loader.batch_sampler) in (
        BatchSampler,
        type(None),
    )
