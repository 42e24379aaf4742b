"""Fashion-MNIST from its four IDX files, read straight into uint8 tensors (no per-image decode)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tocha.data.idx import read_idx
from tocha.data.images import image_splits
from tocha.data.types import DataSplits, Split
from tocha.errors import UserError
from tocha.paths import require_dir

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
DOWNLOAD_ROOT = "./data"


def candidate_dirs(root: str | None) -> list[Path]:
    """Folders searched, in order: root itself and torchvision's layout under it, else Debian's."""
    if root is None:
        return [DEBIAN_DIR]
    return [Path(root), Path(root) / "FashionMNIST" / "raw"]


def _find_in(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, name in FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def find_files(root: str | None) -> dict[str, Path] | None:
    """The four files from the first folder that holds all of them (each `.gz` or plain)."""
    for folder in candidate_dirs(root):
        found = _find_in(folder)
        if found:
            return found
    return None


def _download(root: str | None) -> dict[str, Path] | None:
    from torchvision.datasets import FashionMNIST

    target = root or DOWNLOAD_ROOT
    FashionMNIST(target, train=True, download=True)
    FashionMNIST(target, train=False, download=True)
    return _find_in(Path(target) / "FashionMNIST" / "raw")


def _missing_error(root: str | None) -> UserError:
    looked = "; ".join(str(d) for d in candidate_dirs(root))
    names = ", ".join(f"{n}[.gz]" for n in FILES.values())
    return UserError(
        f"Fashion-MNIST files not found: looked for {names} in {looked}",
        where="config key data.root" if root else "the Debian package's folder",
        fix="install them with 'apt-get install dataset-fashion-mnist', point data.root=PATH at a "
        "folder that holds them, or set data.download=true (needs network)",
    )


def _pair(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise UserError(
            f"'{images_path}' holds {images.dtype} {tuple(images.shape)}, expected uint8 [N,28,28]",
            where="Fashion-MNIST images",
            fix="point data.root at the original files",
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"'{labels_path}' holds {tuple(labels.shape)} labels for {len(images)} images in '{images_path}'",
            where="Fashion-MNIST labels",
            fix="the image and label files must come from the same release",
        )
    labels = labels.to(torch.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise UserError(
            f"'{labels_path}' has labels {int(labels.min())}..{int(labels.max())}, expected 0..{len(CLASSES) - 1}",
            where="Fashion-MNIST labels",
            fix="point data.root at the original Fashion-MNIST files",
        )
    return Split(labels=labels, inputs=images.unsqueeze(1))


def load(
    *,
    root: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    channels: str | int = "auto",
    download: bool = False,
) -> DataSplits:
    """Fashion-MNIST: 60,000 train (minus val) and 10,000 test images, uint8 [N,1,28,28]."""
    if root is not None and os.path.lexists(root):  # a missing root gets the list of places searched
        require_dir(root, "config key data.root", expected="a folder that holds the Fashion-MNIST IDX files")
    files = find_files(root)
    notes: tuple[str, ...] = ()
    if files is None:
        if not download:
            raise _missing_error(root)
        files = _download(root)
        if files is None:
            raise _missing_error(root)
        notes = (f"downloaded Fashion-MNIST into {files['train_images'].parent}",)
    folder = files["train_images"].parent
    gz = {p.name.endswith(".gz") for p in files.values()}
    kind = "gzip" if gz == {True} else "plain" if gz == {False} else "gzip and plain"
    train = _pair(files["train_images"], files["train_labels"])
    test = _pair(files["test_images"], files["test_labels"])
    return image_splits(
        train,
        test,
        classes=CLASSES,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        channels=channels,
        source=f"{folder} (IDX, {kind})",
        notes=notes,
    )
