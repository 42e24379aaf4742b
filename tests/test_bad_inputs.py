"""Every bad input ends with exit code 2, one message (what, where, fix), no traceback, and no
existing file changed. Table-driven: each case builds its files, runs the CLI in a subprocess
(two at a time), and lists the words its message must contain."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOCHA = [sys.executable, "-m", "tocha.cli"]
QUICK = ["epochs=1", "threads=1", "log.tensorboard=false"]


def idx(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    return header + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


def fashion_folder(root: Path, *, bad_magic: bool = False, truncate: bool = False) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(30) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(10) % 10}
    root.mkdir(parents=True)
    for name, array in arrays.items():
        data = idx(array, b"\x12\x34\x08\x03" if bad_magic and name.startswith("train-images") else None)
        if truncate and name.startswith("train-images"):
            data = data[: len(data) // 2]
        with gzip.open(root / f"{name}.gz", "wb") as f:
            f.write(data)
    return root


def image_folder(root: Path, classes: dict[str, int], broken: str | None = None) -> Path:
    for k, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (10, 10), 30 * (k + 1) + i).save(root / name / f"{i}.png")
    if broken:
        (root / broken).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def run_folder_without_checkpoints(root: Path) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text("epochs: 1\n")
    (root / "meta.json").write_text("{}\n")
    return root


def fixed_channel_model(folder: Path, channels: int) -> str:
    """A user model that ignores the in_channels tocha offers: model=fixed<C>:make."""
    (folder / f"fixed{channels}.py").write_text(
        "from torch import nn\n\n\ndef make(num_classes):\n"
        f"    return nn.Sequential(nn.Conv2d({channels}, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, num_classes))\n")
    return f"fixed{channels}:make"


def weights_of_another_model(path: Path) -> Path:
    import torch

    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    return path


# name -> (setup(tmp) -> argv, words the message must contain)
CASES = {
    "unknown key": (lambda t: ["train", "epoch=3"], ["unknown config key 'epoch'", "did you mean 'epochs'"]),
    "wrong type": (lambda t: ["train", "epochs=three"], ["epochs", "not a valid int"]),
    "lr <= 0": (lambda t: ["train", "lr=0"], ["lr", "out of range", "> 0"]),
    "batch_size 0": (lambda t: ["train", "batch_size=0"], ["batch_size", ">= 1"]),
    "val_fraction 1": (lambda t: ["train", "data.val_fraction=1"], ["data.val_fraction", "< 1"]),
    "yaml syntax": (lambda t: (t / "bad.yaml").write_text("epochs: 3\ndata:\n  name: digits\n root: x\n")
                    and ["train", "bad.yaml"], ["bad.yaml", "line"]),
    "missing data root": (lambda t: ["train", "data.root=/nonexistent/fmnist", *QUICK], ["/nonexistent", "not found"]),
    "IDX wrong magic": (lambda t: ["train", f"data.root={fashion_folder(t / 'fm', bad_magic=True)}", *QUICK],
                        ["not a valid IDX file", "train-images"]),
    "IDX truncated": (lambda t: ["train", f"data.root={fashion_folder(t / 'fm', truncate=True)}", *QUICK],
                      ["train-images", "IDX"]),
    "image folder empty": (lambda t: (t / "imgs").mkdir() or ["train", "data=imagefolder", "data.root=imgs", *QUICK],
                           ["class sub-folders"]),
    "image folder one class": (lambda t: ["train", "data=imagefolder",
                                          f"data.root={image_folder(t / 'imgs', {'cat': 6})}", *QUICK],
                               ["only one class"]),
    "unreadable image": (lambda t: ["train", "data=imagefolder",
                                    f"data.root={image_folder(t / 'imgs', {'a': 6, 'b': 6}, broken='a/bad.png')}",
                                    *QUICK], ["cannot read image", "bad.png", "on_bad_file=skip"]),
    "grayscale into an RGB-only model": (lambda t: ["train", "data=digits", f"model={fixed_channel_model(t, 3)}",
                                                    *QUICK], ["expected input", "data.channels=3"]),
    "RGB into a grayscale-only model": (lambda t: ["train", "data=digits", "data.channels=3",
                                                   f"model={fixed_channel_model(t, 1)}", *QUICK],
                                        ["3 channel(s)", "data.channels=1"]),
    "model function that fails": (lambda t: ["train", "data=digits", "model=torch.nn:Conv2d", *QUICK],
                                  ["torch.nn:Conv2d", "failed when called", "TypeError"]),
    "weights of another architecture": (lambda t: ["train", "data=digits", "model=mlp",
                                                   f"model.weights={weights_of_another_model(t / 'w.pt')}", *QUICK],
                                        ["no tensor", "w.pt", "fits the model"]),
    "empty text file": (lambda t: (t / "empty.txt").write_text("") or ["train", "task=charlm", "data.path=empty.txt",
                                                                       *QUICK], ["empty.txt", "empty"]),
    "binary text file": (lambda t: (t / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
                         and ["train", "task=charlm", "data.path=img.txt", *QUICK], ["img.txt", "binary"]),
    "seq_len longer than the text": (lambda t: (t / "short.txt").write_text("a short text. " * 20) and
                                     ["train", "task=charlm", "data.path=short.txt", "seq_len=500", *QUICK],
                                     ["seq_len=500", "longer than", "use seq_len="]),
    "text model weights of another architecture": (
        lambda t: (t / "text.txt").write_text("some words here. " * 100) and
        ["train", "task=charlm", "data.path=text.txt", "model.hidden=8", f"model.weights={weights_of_another_model(t / 'w.pt')}",
         *QUICK], ["no tensor", "w.pt", "fits the model"]),
    "image data for the text task": (lambda t: ["train", "task=charlm", "data=digits", *QUICK],
                                     ["task=charlm", "data=text"]),
    "out not writable": (lambda t: (t / "afile").write_text("x") and ["train", "data=digits", "out=afile/run",
                                                                      *QUICK], ["cannot write the run folder"]),
    "run folder already there": (lambda t: (t / "old").mkdir() or (t / "old" / "keep.txt").write_text("keep")
                                 and ["train", "data=digits", "out=old", *QUICK], ["'old'", "not written by tocha", "keep.txt"]),
    "resume without a checkpoint": (lambda t: run_folder_without_checkpoints(t / "run") and
                                    ["train", "--resume", "run"], ["no valid checkpoint", "--resume"]),
    "resume of a missing folder": (lambda t: ["train", "--resume", "nowhere"], ["does not exist"]),
}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_case(name: str, base: Path) -> tuple[str, subprocess.CompletedProcess, dict, dict]:
    folder = base / name.replace(" ", "_").replace("<=", "le")
    folder.mkdir()
    argv = CASES[name][0](folder)
    before = snapshot(folder)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*TOCHA, *argv], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    return name, proc, before, snapshot(folder)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(2) as pool:
        return {name: rest for name, *rest in pool.map(lambda n: run_case(n, base), CASES)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(outcomes, name):
    proc, before, after = outcomes[name]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors, proc.stderr
    for word in CASES[name][1]:
        assert word in proc.stderr, f"{word!r} not in:\n{proc.stderr}"
    assert before == after  # nothing that was there changed, nothing half-written left behind
