"""What every benchmark runner trains: the seeds' models on the same tensors, with the same settings."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

# Per model: the seed tutorial's own settings (seed 004's MLP; seed 000's CNN) and a target
# test accuracy the settings reach within a few epochs on Fashion-MNIST.
SEED_SETTINGS = {
    "mlp": {"batch_size": 100, "lr": 0.5, "target": 0.80},
    "cnn": {"batch_size": 40, "lr": 0.01, "target": 0.85},
}


def seed_mlp(in_features: int, classes: int) -> nn.Module:
    """Seed 004: one hidden layer of 32, ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, classes))


def seed_cnn(channels: int, size: int, classes: int) -> nn.Module:
    """Seed 000's repository CNN as it runs: conv 5x5 -> 32, fc -> 256, dropout, fc, log-softmax."""
    side = size - 4
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, classes),
        nn.LogSoftmax(dim=1),
    )


@dataclass(frozen=True)
class Workload:
    name: str  # dataset name, for people
    model: str  # "mlp" | "cnn"
    x_train: torch.Tensor  # uint8 [N,C,H,W] on the CPU
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    batch_size: int
    lr: float
    epochs: int
    target: float
    seed: int = 0
    idx_files: dict[str, Path] | None = None  # Fashion-MNIST's IDX files, for torchvision's FashionMNIST
    stop_at: float | None = None  # stop once the test accuracy reaches this (time-to-accuracy runs)
    max_seconds: float | None = None  # ... or once training has taken this long

    @property
    def mean_std(self) -> tuple[float, float]:
        x = self.x_train.float() / 255
        return float(x.mean()), float(x.std())

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean_std
        return (x.float() / 255 - mean) / std

    def build_model(self) -> nn.Module:
        """The same initial weights for every runner and repeat."""
        torch.manual_seed(self.seed)
        _, c, h, _ = self.x_train.shape
        net = seed_mlp(c * h * h, self.classes) if self.model == "mlp" else seed_cnn(c, h, self.classes)
        return copy.deepcopy(net)

    def subset(self, n: int) -> Workload:
        return replace(
            self, x_train=self.x_train[:n], y_train=self.y_train[:n], epochs=1, stop_at=None, max_seconds=None
        )

    def done(self, seconds: float, accuracy: float) -> bool:
        """Whether a run with a stop rule may stop after this epoch."""
        return (self.stop_at is not None and accuracy >= self.stop_at) or (
            self.max_seconds is not None and seconds >= self.max_seconds
        )

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y_train) // self.batch_size)


def load_workload(
    data: str,
    model: str,
    *,
    epochs: int,
    batch_size: int | None,
    lr: float | None,
    target: float | None,
    train_samples: int | None,
    seed: int,
) -> Workload:
    """Fashion-MNIST (train without its validation hold-out, as the tutorials train) or digits."""
    from tocha.data import load_data

    splits = load_data(data, val_fraction=0.0, seed=seed)
    x, y = splits.train.inputs, splits.train.labels
    if train_samples is not None:
        x, y = x[:train_samples], y[:train_samples]
    settings = SEED_SETTINGS[model]
    files = None
    if data == "fashion-mnist":
        from tocha.data import fashion_mnist

        files = fashion_mnist.find_files(None)
    return Workload(
        name=data,
        model=model,
        x_train=x,
        y_train=y,
        x_test=splits.test.inputs,
        y_test=splits.test.labels,
        classes=len(splits.classes),
        batch_size=batch_size or settings["batch_size"],
        lr=lr or settings["lr"],
        epochs=epochs,
        target=settings["target"] if target is None else target,
        seed=seed,
        idx_files=files,
    )
