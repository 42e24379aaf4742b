"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped with sklearn: never downloads)."""

from __future__ import annotations

import torch

from tocha.data.images import image_splits
from tocha.data.splits import stratified_split
from tocha.data.types import DataSplits, Split

CLASSES = tuple(str(i) for i in range(10))
TEST_FRACTION = 0.2
# Fixed, not the run's seed: `tocha eval` must always score the same held-out test images.
TEST_SEED = 0


def load(
    *, val_fraction: float = 0.2, seed: int = 0, image_size: int | None = None, channels: str | int = "auto"
) -> DataSplits:
    """Digits as uint8 [N,1,8,8]: a fixed 20% test split, then val from the rest with `seed`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Values are 0..16 (counts of set pixels in 4x4 blocks); stretch to the usual 0..255.
    images = torch.from_numpy(bunch.images).mul(255 / 16).round_().clamp_(0, 255).to(torch.uint8)
    full = Split(labels=torch.from_numpy(bunch.target).to(torch.int64), inputs=images.unsqueeze(1))
    keep, held = stratified_split(full.labels, TEST_FRACTION, TEST_SEED)
    note = (
        f"digits has no official test split: held out a stratified {TEST_FRACTION:.0%} "
        f"({len(held)} images, fixed seed {TEST_SEED}) as the test split"
    )
    return image_splits(
        full.subset(keep),
        full.subset(held),
        classes=CLASSES,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        channels=channels,
        source="scikit-learn load_digits (8x8, 0..16 scaled to 0..255)",
        notes=(note,),
    )
