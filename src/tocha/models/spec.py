"""What a model is built from: stored in the run folder, read back by eval, predict, export."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in the run folder."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int  # 0 for flat feature vectors
    hidden: tuple[int, ...] = (32,)
    width: int = 16
    dropout: float = 0.25
    bn_momentum: float = 0.1  # BatchNorm running-statistics momentum of built models (older runs: 0.1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["hidden"] = tuple(values.get("hidden", (32,)))
        return cls(**values)
