"""Python API: DataSplits from tensors/arrays already in memory, or from any torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tocha.data.splits import channel_stats, split_off
from tocha.data.types import DataSplits, Split, default_sampling
from tocha.errors import UserError

_WHERE = "splits_from_tensors"


def _labels(y: Any, n: int | None, where: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).cpu()
    if y.ndim != 1:
        raise UserError(
            f"labels must be one-dimensional [N], got shape {tuple(y.shape)}",
            where=where,
            fix="pass class indices, not one-hot vectors (use y.argmax(1))",
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(
            f"labels must be integers, got {y.dtype}",
            where=where,
            fix="pass class indices 0..K-1 as an integer tensor (y.long())",
        )
    if n is not None and len(y) != n:
        raise UserError(
            f"{n} inputs but {len(y)} labels", where=where, fix="inputs and labels must have the same length"
        )
    y = y.to(torch.int64)
    if len(y) and y.min() < 0:
        raise UserError(
            f"labels must be >= 0, found {int(y.min())}", where=where, fix="map the classes to indices 0..K-1"
        )
    return y


def _inputs(x: Any, where: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).cpu()
    notes: tuple[str, ...] = ()
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x.unsqueeze(1)  # [N,H,W] grayscale
        if x.ndim != 4:
            raise UserError(
                f"uint8 inputs must be images [N,H,W] or [N,C,H,W], got shape {tuple(x.shape)}",
                where=where,
                fix="pass float features [N,D] as a float tensor instead",
            )
    elif x.dtype.is_floating_point:
        if x.dtype != torch.float32:
            notes = (f"inputs converted from {x.dtype} to float32",)
            x = x.to(torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim not in (2, 4):
            raise UserError(
                f"float inputs must be [N,D] features or [N,C,H,W] images, got {tuple(x.shape)}",
                where=where,
                fix="flatten features with x.reshape(len(x), -1)",
            )
    else:
        raise UserError(
            f"inputs must be uint8 images or floating point, got {x.dtype}",
            where=where,
            fix="use x.to(torch.uint8) for 0..255 images or x.float() for features",
        )
    if x.ndim == 4 and x.shape[2] != x.shape[3]:
        raise UserError(
            f"images must be square, got {x.shape[2]}x{x.shape[3]}",
            where=where,
            fix="resize or crop them to a square first",
        )
    return x.contiguous(), notes


def _classes(classes: Sequence[str] | None, labels: list[torch.Tensor], where: str) -> tuple[str, ...]:
    top = max((int(y.max()) for y in labels if len(y)), default=-1)
    if classes is None:
        return tuple(str(i) for i in range(top + 1))
    if top >= len(classes):
        raise UserError(
            f"label {top} is out of range for {len(classes)} class names",
            where=where,
            fix="pass one name per class, in label order",
        )
    return tuple(str(c) for c in classes)


def splits_from_tensors(
    x: Any,
    y: Any,
    *,
    val: tuple[Any, Any] | None = None,
    test: tuple[Any, Any] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> DataSplits:
    """DataSplits from in-memory arrays (torch or numpy), kept on the CPU.

    x: uint8 [N,C,H,W] or [N,H,W] images (mean/std computed on train), float [N,C,H,W] images
    used as they are, or float [N,D] features (image_size 0, in_channels D). y: int labels [N].
    `val`/`test` are optional (x, y) pairs; without `val`, val_fraction of train is held out.
    """
    parts: dict[str, Split] = {}
    notes: tuple[str, ...] = ()
    for role, pair in (("train", (x, y)), ("val", val), ("test", test)):
        if pair is None:
            continue
        where = f"{_WHERE} {role}"
        inputs, input_notes = _inputs(pair[0], where)
        notes += tuple(f"{role}: {n}" for n in input_notes)
        parts[role] = Split(labels=_labels(pair[1], len(inputs), where), inputs=inputs)
        if role != "train":
            want, got = parts["train"].inputs, parts[role].inputs
            if want.shape[1:] != got.shape[1:] or want.dtype != got.dtype:
                raise UserError(
                    f"{role} inputs are {got.dtype} {tuple(got.shape[1:])} per example but train "
                    f"inputs are {want.dtype} {tuple(want.shape[1:])}",
                    where=where,
                    fix="give every split the same shape and dtype",
                )
    train = parts["train"]
    names = _classes(classes, [p.labels for p in parts.values()], _WHERE)
    held = None
    if "val" not in parts:
        train, held, split_notes = split_off(train, val_fraction, seed, where=f"{_WHERE} val_fraction")
        notes += split_notes
    mean, std = channel_stats(train)
    image = train.inputs.ndim == 4
    return DataSplits(
        train=train,
        val=parts.get("val", held),
        test=parts.get("test"),
        classes=names,
        in_channels=int(train.inputs.shape[1]),
        image_size=int(train.inputs.shape[2]) if image else 0,
        mean=mean,
        std=std,
        source="in-memory tensors",
        notes=notes,
    )


def _dataset_labels(ds: Dataset, where: str) -> torch.Tensor:
    n = len(ds)
    targets = getattr(ds, "targets", None)
    if targets is None:
        # One pass over the items: slow for decoded files, which is why `.targets` is preferred.
        targets = [ds[i][1] for i in range(n)]
        if any(
            not isinstance(t, (int, np.integer)) and not (isinstance(t, torch.Tensor) and t.ndim == 0) for t in targets
        ):
            raise UserError(
                "dataset items must be (input, int label)",
                where=where,
                fix="return class indices as ints from __getitem__",
            )
        targets = [int(t) for t in targets]
    labels = _labels(targets, None, where)
    if len(labels) != n:
        raise UserError(
            f"dataset has {n} items but {len(labels)} targets", where=where, fix="make .targets hold one label per item"
        )
    return labels


def splits_from_dataset(
    train_ds: Dataset,
    val_ds: Dataset | None = None,
    test_ds: Dataset | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    loaders: dict | None = None,
) -> DataSplits:
    """DataSplits from torch Datasets whose items are (tensor, int): uint8 [C,H,W], float [C,H,W] or [D].

    Labels come from `.targets` when present (else one pass over the items), class names from
    `classes`, else the train dataset's `.classes`, else "0".."K-1". `loaders` maps a role to the
    user's DataLoader over that dataset: its collate_fn turns items into tensors (so they may be
    anything it takes), and it makes the batches when the split is not held in memory.
    """
    loaders = loaders or {}
    parts: dict[str, Split] = {}
    for role, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        if ds is not None:
            labels = _dataset_labels(ds, f"splits_from_dataset {role}")
            parts[role] = Split(labels=labels, dataset=ds, loader=loaders.get(role))
    if len(train_ds) == 0:
        raise UserError("the training dataset is empty", where="splits_from_dataset train")
    first = parts["train"].head(1)[0] if parts["train"].loader is not None else train_ds[0][0]
    if not isinstance(first, torch.Tensor) or first.ndim not in (1, 3):
        got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise UserError(
            f"dataset items must be (tensor [C,H,W] or [D], int), got an input of {got}",
            where="splits_from_dataset train",
            fix="add a transform that returns a tensor, e.g. torchvision.transforms.v2.PILToTensor()",
        )
    if first.ndim == 3 and first.shape[1] != first.shape[2]:
        raise UserError(
            f"images must be square, got {first.shape[1]}x{first.shape[2]}",
            where="splits_from_dataset train",
            fix="add a Resize((S, S)) transform",
        )
    names = classes if classes is not None else getattr(train_ds, "classes", None)
    names = _classes(names, [p.labels for p in parts.values()], "splits_from_dataset")
    train, notes, held = parts["train"], (), None
    if "val" not in parts and train.loader is not None and not default_sampling(train.loader):
        raise UserError(
            f"train_data is a DataLoader with its own sampler ({type(train.loader.sampler).__name__}), "
            "so tocha cannot hold out a validation split from it",
            where="tocha.fit val_data",
            fix="pass val_data= (a Dataset, a DataLoader or (x, y) tensors)",
        )
    if "val" not in parts:
        train, held, notes = split_off(train, val_fraction, seed, where="splits_from_dataset val_fraction")
    mean, std = channel_stats(train)
    return DataSplits(
        train=train,
        val=parts.get("val", held),
        test=parts.get("test"),
        classes=names,
        in_channels=int(first.shape[0]),
        image_size=int(first.shape[1]) if first.ndim == 3 else 0,
        mean=mean,
        std=std,
        source=f"torch Dataset {type(train_ds).__name__}",
        notes=notes,
    )
