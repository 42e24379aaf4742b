"""Resumable checkpoints: one folder per checkpoint, written atomically and verified on the way back.

    checkpoints/step-00000120/
        model.safetensors   weights and buffers
        state.pt            optimizer, scheduler, GradScaler, every RNG, the loop position and history
        manifest.json       size and SHA-256 of both files; written last

The folder is assembled under a temporary name, every file fsync'ed, then renamed into place, so a
kill at any moment leaves either the complete checkpoint or none (never a damaged one in its
place). `latest_valid` checks each folder against its manifest, newest first, and reports the
ones it had to pass over. `state.pt` is read with ``torch.load(weights_only=True)``: a file that
carries a pickled object is refused and no code from it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tocha.engine.checkpoint import _fsync_dir, torch_save

WEIGHTS, STATE, MANIFEST = "model.safetensors", "state.pt", "manifest.json"
PREFIX = "step-"
FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write(folder: Path, step: int, model: nn.Module, state: dict, *, keep: int) -> Path:
    """Write checkpoint `step` under `folder` atomically, then delete all but the newest `keep`."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f".{PREFIX}*"):  # half-written folders of a killed process
        shutil.rmtree(leftover, ignore_errors=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS))
        torch_save(state, tmp / STATE)
        files = {}
        for name in (WEIGHTS, STATE):
            _fsync(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=2))
        _fsync(tmp / MANIFEST)
        _fsync_dir(tmp)
        if final.exists():  # the same step again (e.g. right after a resume): replace it
            old = folder / f".{final.name}.old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in all_checkpoints(folder)[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def all_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, newest (highest step) first; temporary and stray names ignored."""
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)


def problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when its files match the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "manifest.json is missing or unreadable"
    for name in (WEIGHTS, STATE):
        entry = files.get(name) if isinstance(files, dict) else None
        if not entry or not (path / name).is_file():
            return f"{name} is missing"
        size = (path / name).stat().st_size
        if size != entry.get("bytes"):
            return f"{name} has {size} bytes, the manifest says {entry.get('bytes')} (truncated?)"
        if _sha256(path / name) != entry.get("sha256"):
            return f"{name} does not match its SHA-256 (damaged)"
    return None


@dataclass(frozen=True)
class Loaded:
    path: Path
    weights: dict[str, torch.Tensor]
    state: dict
    skipped: tuple[str, ...]  # "step-...: why" for newer checkpoints that could not be used


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of a verified checkpoint; raises ValueError for content that is not safe or not ours."""
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS))
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for damage
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"state.pt cannot be loaded safely ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("state.pt is not a tocha training state")
    return weights, state


def latest_valid(folder: Path) -> Loaded | None:
    skipped = []
    for path in all_checkpoints(folder):
        why = problem(path)
        if why is None:
            try:
                weights, state = read(path)
            except ValueError as exc:
                why = str(exc)
            else:
                return Loaded(path, weights, state, tuple(skipped))
        skipped.append(f"{path.name}: {why}")
    if skipped:
        return Loaded(Path(), {}, {}, tuple(skipped))
    return None


# ---------------------------------------------------------------- random number generators


def rng_state(extra: dict[str, torch.Generator]) -> dict:
    """Every RNG a run draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_gauss),
            "cached": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in extra.items()},
    }
    return state


def restore_rng(state: dict, extra: dict[str, torch.Generator]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in extra.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
