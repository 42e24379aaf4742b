"""Flip test-time augmentation: the logits are the mean of the image's and its mirror image's."""

from __future__ import annotations

import torch
from torch import nn


class FlipTTA(nn.Module):
    """Wraps a classifier of [N, C, H, W] images; a traced or exported graph holds both views."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:  # flat features have no left and right
            return self.model(x)
        return (self.model(x) + self.model(x.flip(3))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    return FlipTTA(model) if tta == "flip" else model
