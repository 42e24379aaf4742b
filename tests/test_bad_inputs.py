"""Every bad input ends with exit code 2, one message (what, where, fix), no traceback, and no
existing file changed. Table-driven: each case builds its files, runs the CLI in a subprocess
(two at a time), and lists the words its message must contain."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
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
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(30) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10) % 10,
    }
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
        "                         nn.Linear(4, num_classes))\n"
    )
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
    "yaml syntax": (
        lambda t: (t / "bad.yaml").write_text("epochs: 3\ndata:\n  name: digits\n root: x\n") and ["train", "bad.yaml"],
        ["bad.yaml", "line"],
    ),
    "missing data root": (lambda t: ["train", "data.root=/nonexistent/fmnist", *QUICK], ["/nonexistent", "not found"]),
    "IDX wrong magic": (
        lambda t: ["train", f"data.root={fashion_folder(t / 'fm', bad_magic=True)}", *QUICK],
        ["not a valid IDX file", "train-images"],
    ),
    "IDX truncated": (
        lambda t: ["train", f"data.root={fashion_folder(t / 'fm', truncate=True)}", *QUICK],
        ["train-images", "IDX"],
    ),
    "image folder empty": (
        lambda t: (t / "imgs").mkdir() or ["train", "data=imagefolder", "data.root=imgs", *QUICK],
        ["class sub-folders"],
    ),
    "image folder one class": (
        lambda t: ["train", "data=imagefolder", f"data.root={image_folder(t / 'imgs', {'cat': 6})}", *QUICK],
        ["only one class"],
    ),
    "unreadable image": (
        lambda t: [
            "train",
            "data=imagefolder",
            f"data.root={image_folder(t / 'imgs', {'a': 6, 'b': 6}, broken='a/bad.png')}",
            *QUICK,
        ],
        ["cannot read image", "bad.png", "on_bad_file=skip"],
    ),
    "grayscale into an RGB-only model": (
        lambda t: ["train", "data=digits", f"model={fixed_channel_model(t, 3)}", *QUICK],
        ["expected input", "data.channels=3"],
    ),
    "RGB into a grayscale-only model": (
        lambda t: ["train", "data=digits", "data.channels=3", f"model={fixed_channel_model(t, 1)}", *QUICK],
        ["3 channel(s)", "data.channels=1"],
    ),
    "model function that fails": (
        lambda t: ["train", "data=digits", "model=torch.nn:Conv2d", *QUICK],
        ["torch.nn:Conv2d", "failed when called", "TypeError"],
    ),
    "weights of another architecture": (
        lambda t: [
            "train",
            "data=digits",
            "model=mlp",
            f"model.weights={weights_of_another_model(t / 'w.pt')}",
            *QUICK,
        ],
        ["no tensor", "w.pt", "fits the model"],
    ),
    "empty text file": (
        lambda t: (t / "empty.txt").write_text("") or ["train", "task=charlm", "data.path=empty.txt", *QUICK],
        ["empty.txt", "empty"],
    ),
    "binary text file": (
        lambda t: (
            (t / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
            and ["train", "task=charlm", "data.path=img.txt", *QUICK]
        ),
        ["img.txt", "binary"],
    ),
    "seq_len longer than the text": (
        lambda t: (
            (t / "short.txt").write_text("a short text. " * 20)
            and ["train", "task=charlm", "data.path=short.txt", "seq_len=500", *QUICK]
        ),
        ["seq_len=500", "longer than", "use seq_len="],
    ),
    "text model weights of another architecture": (
        lambda t: (
            (t / "text.txt").write_text("some words here. " * 100)
            and [
                "train",
                "task=charlm",
                "data.path=text.txt",
                "model.hidden=8",
                f"model.weights={weights_of_another_model(t / 'w.pt')}",
                *QUICK,
            ]
        ),
        ["no tensor", "w.pt", "fits the model"],
    ),
    "image data for the text task": (
        lambda t: ["train", "task=charlm", "data=digits", *QUICK],
        ["task=charlm", "data=text"],
    ),
    "out not writable": (
        lambda t: (t / "afile").write_text("x") and ["train", "data=digits", "out=afile/run", *QUICK],
        ["cannot write the run folder"],
    ),
    "run folder already there": (
        lambda t: (
            (t / "old").mkdir()
            or (t / "old" / "keep.txt").write_text("keep")
            and ["train", "data=digits", "out=old", *QUICK]
        ),
        ["'old'", "not written by tocha", "keep.txt"],
    ),
    "resume without a checkpoint": (
        lambda t: run_folder_without_checkpoints(t / "run") and ["train", "--resume", "run"],
        ["no valid checkpoint", "--resume"],
    ),
    "resume of a missing folder": (lambda t: ["train", "--resume", "nowhere"], ["does not exist"]),
}


def yaml_file(text: str, *extra: str):
    """A case whose config file c.yaml holds `text`."""
    return lambda t: (t / "c.yaml").write_text(text) and ["train", "c.yaml", *extra]


def image_folder_with_loop(root: Path) -> Path:
    """One class whose folder links back to the root: only one class either way, however often it is walked."""
    image_folder(root, {"cat": 3})
    (root / "cat" / "up").symlink_to("..")
    (root / "cat" / "again").symlink_to(".")
    return root


def image_folder_with_hidden_images(root: Path) -> Path:
    """Class 'a' has images only in a hidden sub-folder (thumbnails), so only class 'b' counts."""
    image_folder(root, {"b": 4})
    image_folder(root / "a", {".thumbnails": 4})
    return root


def broken_link(path: Path) -> Path:
    path.symlink_to(path.parent / "gone")
    return path


BILLION_LAUGHS = "a: &a ['lol']\n" + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)
LONG = "n" * 256

# Config-time cases: each fails in config.load, before torch is imported (a fraction of a second).
CASES.update(
    {
        # did-you-mean: every equally close key; a swap of two letters is one edit
        "typo of a shorthand": (lambda t: ["train", "modle=mlp"], ["'modle'", "did you mean 'model' or 'mode'?"]),
        "swapped letters in a key": (lambda t: ["train", "epcohs=3"], ["'epcohs'", "did you mean 'epochs'?"]),
        "key without its section": (lambda t: ["train", "val_fraction=0.1"], ["did you mean 'data.val_fraction'?"]),
        "swapped letters in a value": (lambda t: ["train", "optimizer=sdg"], ["optimizer", "did you mean 'sgd'?"]),
        "typo in a nested yaml key": (
            yaml_file("model:\n  nmae: mlp\n"),
            ["'model.nmae'", "did you mean 'model.name'?"],
        ),
        # numbers: nan/inf for every kind of float key, and ranges the libraries below would refuse later
        "lr nan": (lambda t: ["train", "lr=nan"], ["config key lr,", "not a finite number"]),
        "momentum nan": (lambda t: ["train", "optimizer=sgd", "momentum=nan"], ["config key momentum,", "finite"]),
        "warmup_epochs inf": (lambda t: ["train", "warmup_epochs=inf"], ["config key warmup_epochs,", "finite"]),
        "val_fraction nan": (lambda t: ["train", "data.val_fraction=nan"], ["config key data.val_fraction,", "finite"]),
        "weight_decay -inf": (lambda t: ["train", "weight_decay=-inf"], ["config key weight_decay,", "finite"]),
        "grad_clip inf": (lambda t: ["train", "grad_clip=inf"], ["config key grad_clip,", "finite"]),
        "timeout nan": (lambda t: ["train", "dist.timeout_s=NaN"], ["config key dist.timeout_s,", "finite"]),
        "label_smoothing nan": (lambda t: ["train", "label_smoothing=nan"], ["config key label_smoothing,", "finite"]),
        "step_gamma Infinity": (lambda t: ["train", "step_gamma=Infinity"], ["config key step_gamma,", "finite"]),
        "min_delta inf": (
            lambda t: ["train", "early_stop.min_delta=inf"],
            ["config key early_stop.min_delta,", "finite"],
        ),
        "dropout nan": (lambda t: ["train", "model.dropout=nan"], ["config key model.dropout,", "finite"]),
        "lr_backbone inf": (lambda t: ["train", "lr_backbone=inf"], ["config key lr_backbone,", "finite"]),
        "yaml nan": (yaml_file("momentum: .nan\n"), ["config key momentum, in c.yaml", "finite"]),
        "yaml inf": (yaml_file("lr: .inf\n"), ["config key lr, in c.yaml", "finite"]),
        "seed 2**32": (lambda t: ["train", "seed=4294967296"], ["config key seed", "< 4294967296"]),
        "seed huge": (lambda t: ["train", "seed=123456789012345678901234567890"], ["config key seed", "out of range"]),
        "image_size huge": (lambda t: ["train", "image_size=100000"], ["config key image_size", "<= 4096"]),
        "out name too long": (lambda t: ["train", f"out={LONG}"], ["config key out", "256 bytes", "255"]),
        "out component too long": (lambda t: ["train", f"out=runs/{LONG}/x"], ["config key out", "255"]),
        "out path too long": (lambda t: ["train", "out=" + "/d" * 2100], ["config key out", "4096"]),
        "data.root name too long": (lambda t: ["train", f"data.root={LONG}"], ["config key data.root", "255"]),
        "warm-up as long as the run": (
            lambda t: ["train", "scheduler=cosine", "epochs=2", "warmup_epochs=2"],
            ["warmup_epochs", "as long as the whole run"],
        ),
        "warm-up with onecycle": (
            lambda t: ["train", "scheduler=onecycle", "warmup_epochs=1"],
            ["warmup_epochs", "does nothing with scheduler=onecycle"],
        ),
        # YAML: duplicates, aliases, bombs, nesting, size
        "yaml duplicate key": (
            yaml_file("epochs: 3\nlr: 0.1\nepochs: 4\n"),
            ["duplicate key 'epochs'", "first on line 1", "c.yaml, line 3"],
        ),
        "yaml nested duplicate": (
            yaml_file("data:\n  name: digits\n  name: text\n"),
            ["duplicate key 'name'", "line 3"],
        ),
        "yaml nested and dotted": (yaml_file("data:\n  root: a\ndata.root: b\n"), ["'data.root'", "twice", "c.yaml"]),
        "yaml shorthand and dotted": (yaml_file("data: digits\ndata.name: text\n"), ["'data.name'", "twice"]),
        "yaml alias": (yaml_file("a: &x 3\nepochs: *x\n"), ["aliases/anchors are not supported", "c.yaml, line 1"]),
        "yaml recursive alias": (yaml_file("x: &a [*a]\n"), ["aliases/anchors are not supported", "c.yaml"]),
        "yaml billion laughs": (yaml_file(BILLION_LAUGHS), ["aliases/anchors are not supported", "c.yaml"]),
        "yaml merge key": (yaml_file("base: &b {epochs: 2}\nrun:\n  <<: *b\n"), ["aliases/anchors", "c.yaml"]),
        "yaml nested too deeply": (yaml_file("a: " + "[" * 5000 + "]" * 5000 + "\n"), ["nested too deeply", "c.yaml"]),
        "yaml file too big": (yaml_file("# padding\n" * 200_000), ["c.yaml", "MiB"]),
        "yaml python tag": (yaml_file("epochs: !!python/object/apply:os.system [echo hi]\n"), ["c.yaml", "line 1"]),
        # the config file itself
        "config file is a folder": (lambda t: (t / "conf").mkdir() or ["train", "conf"], ["'conf' is a folder"]),
        "config file is /dev/null": (lambda t: ["train", "/dev/null"], ["'/dev/null' is not a regular file"]),
        "config file is missing": (lambda t: ["train", "nope.yaml"], ["'nope.yaml' does not exist"]),
        "config file is a broken link": (
            lambda t: broken_link(t / "c.yaml") and ["train", "c.yaml"],
            ["'c.yaml' is a broken symbolic link"],
        ),
    }
)

# Data-time cases: each fails while the data or the model's weights are read, before a run folder exists.
CASES.update(
    {
        "text path is /dev/null": (
            lambda t: ["train", "task=charlm", "data.path=/dev/null", *QUICK],
            ["'/dev/null' is not a regular file", "data.path"],
        ),
        "text path is /dev/zero": (
            lambda t: ["train", "task=charlm", "data.path=/dev/zero", *QUICK],
            ["'/dev/zero' is not a regular file", "data.path"],
        ),
        "text path is missing": (
            lambda t: ["train", "task=charlm", "data.path=gone.txt", *QUICK],
            ["'gone.txt' does not exist", "data.path"],
        ),
        "weights are /dev/null": (
            lambda t: ["train", "data=digits", "model=mlp", "model.weights=/dev/null", *QUICK],
            ["'/dev/null' is not a regular file", "model.weights"],
        ),
        "weights are a plain folder": (
            lambda t: (t / "w").mkdir() or ["train", "data=digits", "model=mlp", "model.weights=w", *QUICK],
            ["not a tocha run folder"],
        ),
        "fashion-mnist root is a file": (
            lambda t: (t / "f.gz").write_bytes(b"x") and ["train", "data.root=f.gz", *QUICK],
            ["'f.gz' is a file, not a folder", "data.root"],
        ),
        "fashion-mnist root is /dev/null": (
            lambda t: ["train", "data.root=/dev/null", *QUICK],
            ["'/dev/null' is not a folder", "data.root"],
        ),
        "image folder root is a file": (
            lambda t: (t / "x.png").write_bytes(b"x") and ["train", "data=imagefolder", "data.root=x.png", *QUICK],
            ["'x.png' is a file, not a folder", "data.root"],
        ),
        "image folder root is /dev/zero": (
            lambda t: ["train", "data=imagefolder", "data.root=/dev/zero", *QUICK],
            ["'/dev/zero' is not a folder", "data.root"],
        ),
        "image folder root is a broken link": (
            lambda t: broken_link(t / "imgs") and ["train", "data=imagefolder", "data.root=imgs", *QUICK],
            ["broken symbolic link", "data.root"],
        ),
        "image folder with a symlink loop": (
            lambda t: ["train", "data=imagefolder", f"data.root={image_folder_with_loop(t / 'imgs')}", *QUICK],
            ["only one class", "cat"],
        ),
        "image folder with hidden sub-folders": (
            lambda t: ["train", "data=imagefolder", f"data.root={image_folder_with_hidden_images(t / 'imgs')}", *QUICK],
            ["only one class"],
        ),
    }
)


# Run-time cases: a finished run (trained once, copied into each case) with a damaged meta.json or a
# damaged export, read by every command that uses a run.
_TEMPLATE: list[Path] = []
_TEMPLATE_LOCK = threading.Lock()


def trained_run() -> Path:
    """A tiny digits MLP run with an ONNX export, trained on first use (the cases run two at a time)."""
    with _TEMPLATE_LOCK:
        if not _TEMPLATE:
            base = Path(tempfile.mkdtemp(prefix="tocha-bad-run-"))
            for argv in (["train", "data=digits", "model=mlp", "out=run", *QUICK], ["export", "run"]):
                done = subprocess.run([*TOCHA, *argv], cwd=base, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr
            _TEMPLATE.append(base / "run")
        return _TEMPLATE[0]


def damaged_run(t: Path, meta) -> Path:
    """A copy of the trained run whose meta.json holds `meta` (a JSON text, or a function of the real one)."""
    shutil.copytree(trained_run(), t / "run", ignore=shutil.ignore_patterns(".tocha.lock", "export"))
    path = t / "run" / "meta.json"
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta(json.loads(path.read_text()))))
    Image.new("L", (8, 8), 100).save(t / "digit.png")
    return t / "run"


def damaged_onnx(t: Path, change) -> Path:
    """A copy of the run's ONNX export whose tocha metadata is `change(metadata text)`."""
    import onnx

    proto = onnx.load(str(trained_run() / "export" / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "tocha":
            prop.value = change(prop.value)
    onnx.save(proto, str(t / "model.onnx"))
    Image.new("L", (8, 8), 100).save(t / "digit.png")
    return t / "model.onnx"


def three_classes(meta: dict) -> dict:
    return {**meta, "classes": meta["classes"][:3]}


def other_size(text: str) -> str:
    return json.dumps({**json.loads(text), "image_size": 28})


DAMAGED_META = {  # name -> (meta.json, what the message says is wrong)
    "{}": ("{}", "it has no model description"),
    "[]": ("[]", "it is not a JSON object"),
    "a class list of the wrong length": (three_classes, "its class list does not match the model's output size"),
}
USERS = {  # command -> argv after the run folder
    "eval": lambda run: ["eval", run],
    "predict": lambda run: ["predict", run, "digit.png"],
    "export": lambda run: ["export", run],
    "compress": lambda run: ["compress", run],
    "generate": lambda run: ["generate", run, "--prompt", "a"],
    "distill": lambda run: ["distill", "--teacher", run, "data=digits", "model=mlp", "out=student", *QUICK],
}
for meta_name, (meta, problem) in DAMAGED_META.items():
    for command, args in USERS.items():
        if command == "generate" and callable(meta):
            continue  # a classifier's meta.json, only its classes cut: generate rightly says it is no language model
        CASES[f"{command} on meta.json {meta_name}"] = (
            lambda t, m=meta, a=args: a(str(damaged_run(t, m).name)),
            ["meta.json of run is damaged", problem, "re-export or retrain"],
        )
CASES.update(
    {
        "eval on meta.json that is not JSON": (
            lambda t: ["eval", damaged_run(t, "{").name],
            ["run/meta.json", "not valid JSON"],
        ),
        "predict on meta.json that is not JSON": (
            lambda t: ["predict", damaged_run(t, "{").name, "digit.png"],
            ["run/meta.json", "not valid JSON"],
        ),
        "predict on ONNX metadata that is not JSON": (
            lambda t: ["predict", damaged_onnx(t, lambda text: "not json {").name, "digit.png"],
            ["the tocha metadata of model.onnx is damaged", "not a JSON object", "re-export or retrain"],
        ),
        "predict on ONNX metadata naming the wrong image size": (
            lambda t: ["predict", damaged_onnx(t, other_size).name, "digit.png"],
            ["the tocha metadata of model.onnx is damaged", "image size 28", "8x8"],
        ),
        "export --out an existing folder with --overwrite": (
            lambda t: (t / "d").mkdir() or ["export", damaged_run(t, lambda m: m).name, "--out", "d", "--overwrite"],
            ["'d' is a folder", "--out"],
        ),
        "export --opset 12": (
            lambda t: ["export", damaged_run(t, lambda m: m).name, "--opset", "12"],
            ["opset 18", "--opset 12", "nothing was written"],
        ),
        "eval on a folder that is no run": (
            lambda t: (t / "notrun").mkdir() or ["eval", "notrun"],
            ["'notrun' is not a tocha run folder", "config.yaml is missing"],
        ),
    }
)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_case(name: str, base: Path) -> tuple[str, list, subprocess.CompletedProcess, dict, dict]:
    tag = hashlib.sha256(name.encode()).hexdigest()[:6]  # "{}" and "[]" make the same folder name
    folder = base / (re.sub(r"\W+", "_", name) + tag)
    folder.mkdir()
    argv = CASES[name][0](folder)
    before = snapshot(folder)
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*TOCHA, *argv], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    return name, argv, proc, before, snapshot(folder)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """Runs the cases this session selected (all of them, or those picked with -k), two at a time."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and "name" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    base = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(2) as pool:
        return {name: rest for name, *rest in pool.map(lambda n: run_case(n, base), selected)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(outcomes, name):
    argv, proc, before, after = outcomes[name]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    command = next(a for a in argv if not a.startswith("-"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"tocha {command}: error:")]
    assert len(errors) == 1, proc.stderr
    for word in CASES[name][1]:
        assert word in proc.stderr, f"{word!r} not in:\n{proc.stderr}"
    assert before == after  # nothing that was there changed, nothing half-written left behind
