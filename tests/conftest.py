"""Fixtures shared by test files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def train_digits_cnn():
    """Train a small CNN on scikit-learn's digits, quiet and single-threaded: a run folder to export, compress,
    or teach with. Called as train_digits_cnn(out, width=..., epochs=...)."""
    import tocha

    def train(out: Path, *, width: int, epochs: int) -> Path:
        tocha.fit(
            {"name": "cnn", "width": width},
            "digits",
            epochs=epochs,
            threads=1,
            out=str(out),
            log={"tensorboard": False, "progress": False},
        )
        return out

    return train
