"""Every README command block runs, top to bottom, in a fresh folder: its quick variant.

The quick variant of a block is the block with a few steps instead of whole epochs: `max_steps=5`
on every `tocha train`/`tocha distill`, one fine-tune epoch and a 2-minute budget for `compress`.
The files a block names but does not create (images to predict, image folders, a torchvision
state dict) are made here first, small. What cannot run on a 2-core machine without a GPU or the
network is skipped by name, with the reason, in SKIP; everything else must exit 0.
(tests/test_readme.py checks the same blocks statically, in the fast suite.)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VERBS = (
    "train",
    "eval",
    "predict",
    "generate",
    "env",
    "bench",
    "export",
    "compress",
    "distill",
    "bench-model",
    "--help",
)

pytestmark = pytest.mark.slow

QUICK_STEPS = "max_steps=5"

# Commands the test does not run, by a regex on the command as written, with the reason.
SKIP = {
    r"^tocha bench (?!--quick)": "a benchmark: minutes by design (BENCHMARKS.md has its numbers)",
    r"--nproc 4": "4 processes: more than the 2 cores of this machine, which tocha refuses",
    r"--devices [^ ]*cuda": "needs a GPU",
}


def command_blocks() -> list[tuple[int, list[str]]]:
    """(index, commands) of every README code block that holds a shell command: `tocha VERB ...`,
    `cat ... > FILE` and `python -c`, continuation lines joined, comments dropped. Blocks that show a
    transcript (`$ ` lines) or a diagram are not commands."""
    text = (ROOT / "README.md").read_text()
    out = []
    for i, (lang, body) in enumerate(re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)):
        if lang or "\n$ " in "\n" + body:
            continue
        lines = [line.split("  #")[0].strip() for line in body.replace("\\\n", " ").splitlines()]
        commands = [
            line
            for line in lines
            if (line.startswith("tocha ") and line.split()[1] in VERBS) or line.startswith(("cat ", "python -c"))
        ]
        if any(c.startswith("tocha ") for c in commands):
            out.append((i, commands))
    return out


def runnable_blocks() -> list[int]:
    return [i for i, commands in command_blocks() if any(not skip_reason(c) for c in commands)]


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP.items() if re.search(pattern, command)), None)


def quick(command: str) -> str:
    """The quick variant of one README command."""
    words = shlex.split(command)
    verb = words[1]
    if verb in ("train", "distill") and "--resume" not in words and "--help" not in words:
        words.append(QUICK_STEPS)
    if verb == "compress":
        if "--finetune-epochs" in words:
            words[words.index("--finetune-epochs") + 1] = "1"
        elif "--prune" in words or "--goal" in words:
            words += ["--finetune-epochs", "1"]
        if "--time-budget" in words:
            words[words.index("--time-budget") + 1] = "2m"
    return shlex.join(words)


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def make_inputs(folder: Path) -> None:
    """The files README commands read but no command makes: small, made up, in `folder`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("img1.png", "img2.png", "shoe.png"):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(folder / name)
    for root in ("PATH", "PATH/TO/FOLDERS"):  # the README's placeholders for "your image folders"
        for cls in ("cat", "dog"):
            (folder / root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(12):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / root / cls / f"{i}.png")
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18.pth")  # random weights, no download
    for name in ("README.md", "CONTRIBUTING.md"):
        (folder / name).write_bytes((ROOT / name).read_bytes())
    (folder / "configs").symlink_to(ROOT / "configs")


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.timeout(1500)  # the first block runs 22 commands (about 5 minutes here), over the suite's 600 s
@pytest.mark.parametrize("block", runnable_blocks())
def test_readme_block_runs(block: int, tmp_path: Path):
    commands = dict(command_blocks())[block]
    make_inputs(tmp_path)
    ran, skipped = [], []
    for command in commands:
        why = skip_reason(command)
        if why:
            skipped.append(f"{command}  ({why})")
            continue
        line = quick(command) if command.startswith("tocha ") else command
        done = run(line, tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"README block {block}: {line!r} exited {done.returncode}:\n{out[-3000:]}"
        assert "Traceback" not in out, f"README block {block}: {line!r} printed a traceback:\n{out[-3000:]}"
        ran.append(line)
    print(f"block {block}: ran {len(ran)}, skipped {len(skipped)}: {skipped}")


def test_readme_python_blocks_run(tmp_path: Path):
    """The Python API blocks, in order, as one script, with `max_steps=5` as the default of every fit."""
    make_inputs(tmp_path)
    prelude = (
        "import tocha\n"
        "_fit = tocha.fit\n"
        f"tocha.fit = lambda *a, **k: _fit(*a, **{{'{QUICK_STEPS.split('=')[0]}': 5, **k}})\n"
    )
    script = tmp_path / "readme_api.py"
    script.write_text(prelude + "\n".join(python_blocks()))
    done = run(f"{shlex.quote(sys.executable)} {script.name}", tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "runs/api/summary.json").is_file()


def test_the_error_example_prints_what_the_readme_shows(tmp_path: Path):
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"^\$ (tocha train epoch=3 lr=-1)\n(.*?)^```", text, re.S | re.M)
    assert shown, "the README's configuration-error example is gone"
    done = run(shown.group(1), tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == shown.group(2).strip()


def test_the_quick_variant_rules():
    assert quick("tocha train model=cnn out=runs/cnn") == "tocha train model=cnn out=runs/cnn max_steps=5"
    assert quick("tocha train --resume runs/cnn") == "tocha train --resume runs/cnn"
    assert (
        quick("tocha compress runs/cnn --prune 0.5 --out x")
        == "tocha compress runs/cnn --prune 0.5 --out x --finetune-epochs 1"
    )
    assert quick("tocha compress r --goal speedup=2 --time-budget 20m").endswith("--time-budget 2m --finetune-epochs 1")
    assert skip_reason("tocha bench --quick") is None and skip_reason("tocha bench --model mlp")
    assert quick("tocha train --help") == "tocha train --help"


def test_every_readme_block_is_run_or_skipped_by_name():
    """A block of commands is either run above or every command in it matches a SKIP rule (printed)."""
    blocks = command_blocks()
    assert len(blocks) >= 8, "the README's command blocks were not found"
    for i, commands in blocks:
        if i not in runnable_blocks():
            assert all(skip_reason(c) for c in commands), commands
