"""The data registry: dataset name -> loader returning `DataSplits`.

Kept free of heavy imports: `tocha --help` lists `DATASETS` without importing torch. Each loader
module (which does import torch) is imported only when `load_data` picks it.
"""

from __future__ import annotations

from tocha.data.types import DataSplits, Split
from tocha.errors import UserError, did_you_mean

__all__ = ["DATASETS", "DEFAULT_AUGMENT", "TEXT_DATASETS", "DataSplits", "Split", "load_data"]

DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST, 28x28 grayscale clothing, 10 classes (60k train / 10k test); "
    "read from the IDX files (apt-get install dataset-fashion-mnist)",
    "digits": "scikit-learn's 8x8 handwritten digits, 10 classes, 1,797 images (fixed 20% test split)",
    "imagefolder": "your images in data.root, one sub-folder per class (optionally under train/ and test/)",
    "csv": "a CSV table in data.path: numeric feature columns and the data.target column (a number for "
    "task=regress, a class for task=classify); fixed 20% test split, features standardised with "
    "training-split statistics",
}
# Text for task=charlm, read by tocha.data.text (not through load_data: it yields character ids, not images).
TEXT_DATASETS: dict[str, str] = {
    "text": "task=charlm: UTF-8 text from data.path (a file or folder; default: the Debian fortunes package), "
    "a contiguous 90/10 train/val split",
}
# Augmentations that suit each dataset when data.augment is auto. Digits get none: a flipped or
# shifted 8x8 digit is often another digit (or none). Fashion-MNIST gets flips only: with crops too,
# the default 6-epoch CNN underfits (0.898 vs 0.912 test accuracy, measured on this CPU).
DEFAULT_AUGMENT: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("flip",),
    "digits": (),
    "imagefolder": ("crop", "flip"),
    "csv": (),  # feature rows: nothing to flip or crop
}


def load_data(
    name: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    channels: str = "auto",
    download: bool = False,
    on_bad_file: str = "error",
    path: str | None = None,
    target: str | None = None,
) -> DataSplits:
    """Load a registered dataset: train/val/test splits on the CPU, with classes, stats and notes.

    Nothing is downloaded unless download=True. `image_size` None keeps the dataset's own size
    (64 for image folders); `channels` is "auto", "1" or "3".
    """
    notes: tuple[str, ...] = ()
    if name == "fashion-mnist":
        from tocha.data import fashion_mnist

        splits = fashion_mnist.load(
            root=root, val_fraction=val_fraction, seed=seed, image_size=image_size, channels=channels, download=download
        )
    elif name == "digits":
        from tocha.data import digits

        if root:
            notes = (f"data.root={root} is ignored: digits ships with scikit-learn",)
        splits = digits.load(val_fraction=val_fraction, seed=seed, image_size=image_size, channels=channels)
    elif name == "imagefolder":
        from tocha.data import image_folder

        splits = image_folder.load(
            root=root,
            val_fraction=val_fraction,
            seed=seed,
            image_size=image_size,
            channels=channels,
            on_bad_file=on_bad_file,
        )
    elif name == "csv":  # a table whose target column holds classes (task=regress reads it with load_csv)
        from tocha.data.csv import load_csv

        table = load_csv(path, target=target, val_fraction=val_fraction, seed=seed, kind="classify")
        splits = table.to_splits()
        notes = table.notes
    elif name == "text":
        raise UserError(
            "data=text is read by the text task, not as images",
            where="config keys data.name, task",
            fix="add task=charlm",
        )
    else:
        raise UserError(
            f"unknown dataset '{name}'",
            where="config key data.name",
            allowed=", ".join(DATASETS),
            fix=did_you_mean(name, DATASETS) or "use one of the names above",
        )
    if notes:
        from dataclasses import replace

        splits = replace(splits, notes=notes + splits.notes)
    return splits
