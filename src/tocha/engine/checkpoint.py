"""Checkpoint files: weights as safetensors, training state through torch.save; every write atomic.

A write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
the target, so a killed process never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tocha.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run folder's files get the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)


def save_state(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch_save(state, tmp)


class _Writer:
    """A file for torch.save that remembers the OSError of a failed write: torch's zip writer turns it
    into a RuntimeError saying only 'unexpected pos', which hides a full disk."""

    def __init__(self, f) -> None:
        self.f, self.failed = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.failed = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj, path: Path) -> None:
    """torch.save to `path`; a failed write is raised as the OSError it was (ENOSPC, EDQUOT, EIO)."""
    with open(path, "wb") as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.failed is not None:
                raise writer.failed from None
            raise


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch state-dict file; never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist", fix="check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UserError(
                f"cannot read weights file '{path}': {exc}", fix="the file is damaged or not safetensors; re-create it"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for a bad file
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(
            f"cannot load '{path}' safely: {first}",
            fix="pass a plain state dict (torch.save(model.state_dict(), path)) or a .safetensors "
            "file; tocha never unpickles arbitrary objects",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' does not hold a state dict of tensors", fix="save model.state_dict()")
    return state


def load_weights(model: nn.Module, path: Path, *, strict: bool = True) -> list[str]:
    """Load weights into `model`. With strict=False, tensors whose name or shape does not fit are
    skipped and returned as messages; with strict=True any mismatch is an error naming them."""
    state = read_state_dict(path)
    own = model.state_dict()
    problems = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (problems or missing or unexpected):
        details = (
            problems[:5]
            + [f"missing in file: {k}" for k in missing[:5]]
            + [f"not in model: {k}" for k in unexpected[:5]]
        )
        raise UserError(
            f"weights in '{path}' do not fit the model: " + "; ".join(details),
            fix="use the checkpoint with the model and data it was trained for",
        )
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(
            f"no tensor in '{path}' fits the model",
            where="config key model.weights",
            fix="check that the weights belong to this architecture",
        )
    model.load_state_dict(usable, strict=False)
    return (
        problems
        + [f"not in file (kept initial values): {k}" for k in missing]
        + [f"ignored, not in model: {k}" for k in unexpected]
    )
