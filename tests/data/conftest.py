"""Tiny on-disk fixtures for the data tests: IDX files and folders of PNGs, written per test."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`, written independently of the reader under test."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_file(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fashion_files(
    folder: Path, *, n_train: int = 30, n_test: int = 10, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Fake Fashion-MNIST: the four IDX files with random 28x28 images, 3 of each class at least."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx_file(folder / (name + (".gz" if gz else "")), array)
    return arrays


def write_png(
    path: Path, color: int | tuple[int, int, int], mode: str = "RGB", size: tuple[int, int] = (12, 10)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def make_image_folder(root: Path, counts: dict[str, int], mode: str = "RGB") -> Path:
    """root/<class>/<i>.png; class k's images have a flat value 40*(k+1) so labels can be checked."""
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        value = 40 * (k + 1)
        color = value if mode == "L" else (value, value // 2, 255 - value)
        for i in range(n):
            write_png(root / name / f"{i}.png", color, mode)
    return root


@pytest.fixture
def fixtures():
    """The helpers above, as a fixture (conftest modules are not importable from tests)."""

    class Helpers:
        idx_bytes = staticmethod(idx_bytes)
        write_idx_file = staticmethod(write_idx_file)
        write_fashion_files = staticmethod(write_fashion_files)
        write_png = staticmethod(write_png)
        make_image_folder = staticmethod(make_image_folder)

    return Helpers
