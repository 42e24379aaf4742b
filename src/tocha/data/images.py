"""In-memory uint8 image tensors: argument checks, one-off resize, channel count, and the
assembly of `DataSplits` shared by fashion-mnist, digits and the tensors API."""

from __future__ import annotations

import torch

from tocha.data.splits import channel_stats, split_off
from tocha.data.types import DataSplits, Split
from tocha.errors import UserError

CHANNEL_CHOICES = ("auto", "1", "3")
_RESIZE_CHUNK = 8192  # images per interpolate call: bounds the float copy to a few hundred MB


def parse_channels(channels: str | int) -> str | int:
    """'auto', 1 or 3 from the config's string (or an int from Python callers)."""
    text = str(channels).strip().lower()
    if text not in CHANNEL_CHOICES:
        raise UserError(
            f"channels {channels!r} is not supported",
            where="config key data.channels",
            allowed=", ".join(CHANNEL_CHOICES),
            fix="use 1 for grayscale, 3 for RGB, or auto for the data's own",
        )
    return "auto" if text == "auto" else int(text)


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise UserError(
            f"image size {image_size!r} is not a positive whole number of pixels",
            where="config key image_size",
            fix="use e.g. image_size=32, or leave it on auto",
        )


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> uint8 [N,C,size,size], bilinear with antialiasing, done once up front."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(images), _RESIZE_CHUNK):
        chunk = images[i : i + _RESIZE_CHUNK].float()
        resized = torch.nn.functional.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[i : i + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def set_channels(images: torch.Tensor, channels: str | int) -> torch.Tensor:
    """Match the requested channel count: 1 -> 3 repeats gray; 3 -> 1 takes the luma average."""
    have = images.shape[1]
    if channels == "auto" or channels == have:
        return images
    if channels == 3 and have == 1:
        # expand keeps one copy in memory; contiguous() so later indexing is plain and fast.
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and have == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise UserError(
        f"cannot turn {have}-channel images into {channels} channels",
        where="config key data.channels",
        allowed="auto, 1, 3",
        fix="use channels=auto",
    )


def image_splits(
    train: Split,
    test: Split | None,
    *,
    classes: tuple[str, ...],
    val_fraction: float,
    seed: int,
    image_size: int | None,
    channels: str | int,
    source: str,
    notes: tuple[str, ...] = (),
) -> DataSplits:
    """DataSplits from uint8 [N,C,H,W] train/test splits: resize, channels, val split, train stats."""
    check_image_size(image_size)
    channels = parse_channels(channels)

    def prepare(split: Split | None) -> Split | None:
        if split is None:
            return None
        x = split.inputs
        if image_size is not None:
            x = resize_uint8(x, image_size)
        return Split(labels=split.labels, inputs=set_channels(x, channels))

    train, test = prepare(train), prepare(test)
    train, val, split_notes = split_off(train, val_fraction, seed)
    mean, std = channel_stats(train)
    c, h = train.inputs.shape[1], train.inputs.shape[2]
    return DataSplits(
        train=train,
        val=val,
        test=test,
        classes=tuple(classes),
        in_channels=int(c),
        image_size=int(h),
        mean=mean,
        std=std,
        source=source,
        notes=tuple(notes) + split_notes,
    )
