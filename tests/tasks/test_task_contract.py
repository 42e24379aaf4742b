"""The task contract: every registered task trains a few steps on tiny data through the CLI, resumes
bit for bit from a mid-run checkpoint, writes summary.json and report.html, and refuses a monitor
key it does not produce. A new task without an entry in TINY fails here."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tocha.cli import main
from tocha.tasks import TASKS

COMMON = [
    "threads=1",
    "deterministic=true",
    "log.progress=false",
    "log.tensorboard=false",
    "checkpoint.every_steps=1",
    "checkpoint.keep=10",
    "epochs=2",
]


def _text(tmp: Path) -> str:
    path = tmp / "corpus.txt"
    path.write_text("the cat sat on the mat. a dog ran in the fog. " * 12, encoding="utf-8")
    return str(path)


def _table(tmp: Path) -> str:
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    path = tmp / "diabetes.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*d.feature_names, "target"])
        w.writerows([*row, t] for row, t in zip(d.data, d.target))
    return str(path)


# Per task: the arguments of a run of a few optimizer steps per epoch, and a monitor it never produces.
TINY = {
    "classify": (lambda tmp: ["data=digits", "model=mlp", "batch_size=400"], "val.rmse"),
    "charlm": (
        lambda tmp: [
            "task=charlm",
            f"data.path={_text(tmp)}",
            "seq_len=16",
            "batch_size=12",
            "model.hidden=16",
            "sample_chars=20",
        ],
        "val.f1_macro",
    ),
    "regress": (
        lambda tmp: ["task=regress", "data=csv", f"data.path={_table(tmp)}", "data.target=target", "batch_size=100"],
        "val.accuracy",
    ),
}


def test_every_registered_task_has_a_contract_entry():
    assert set(TINY) == set(TASKS)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_trains_resumes_bit_for_bit_and_reports(name, tmp_path, capsys):
    args = TINY[name][0](tmp_path)
    full = tmp_path / "full"
    assert main(["train", *args, *COMMON, f"out={full}"]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["task"] == name and summary["steps"] >= 4
    assert (full / "report.html").stat().st_size > 0 and (full / "meta.json").is_file()

    # A run killed after its first checkpoint leaves that checkpoint; the resumed run must end identical.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    steps = sorted((cut / "checkpoints").glob("step-*"))
    assert len(steps) >= 3
    for later in steps[1:]:
        shutil.rmtree(later)
    for name_ in ("summary.json", "report.html"):
        (cut / name_).unlink()
    assert main(["train", "--resume", str(cut)]) == 0
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "summary.json").read_text())["best"] == summary["best"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_refuses_a_monitor_it_does_not_produce(name, tmp_path, capsys):
    args, foreign = TINY[name][0](tmp_path), TINY[name][1]
    out = tmp_path / "never"
    assert main(["train", *args, *COMMON, f"monitor={foreign}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert foreign in err and "Traceback" not in err
    assert not out.exists()
