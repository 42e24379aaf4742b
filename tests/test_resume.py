"""Never lose a run: exact resume, verified checkpoints, safe loading, signals, NaN, early stopping.

The in-process tests use `tocha.fit` on digits (a second or two each); the kill -9 tests run the
CLI in subprocesses and are marked slow.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tocha
from tocha.engine import resume
from tocha.errors import UserError

RUN = dict(
    epochs=4,
    batch_size=64,
    threads=1,
    deterministic=True,
    log={"tensorboard": False, "progress": False},
    data={"augment": ["flip"]},
    checkpoint={"every_steps": 3, "keep": 3},
)


def fit(out: Path, **extra):
    return tocha.fit({"name": "cnn", "width": 8}, "digits", out=str(out), **{**RUN, **extra})


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def eval_records(run: Path) -> list[dict]:
    """Eval records of metrics.jsonl without the timing fields (they differ run to run)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in r.items() if "second" not in k and "wait" not in k}
        for r in map(json.loads, lines)
        if r["kind"] == "eval"
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    fit(out)
    return out


def test_two_cpu_runs_with_the_same_seed_write_identical_metrics(reference, tmp_path):
    fit(tmp_path / "again")
    assert eval_records(tmp_path / "again") == eval_records(reference)
    assert same_weights(weights(tmp_path / "again"), weights(reference))


def test_checkpoints_are_verified_folders_and_only_the_newest_are_kept(reference):
    found = resume.all_checkpoints(reference / "checkpoints")
    assert len(found) == 3
    steps = [int(p.name.split("-")[1]) for p in found]
    assert steps == sorted(steps, reverse=True)
    for path in found:
        assert resume.problem(path) is None
        assert {p.name for p in path.iterdir()} == {"model.safetensors", "state.pt", "manifest.json"}


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def rewind(run: Path, keep_step_index: int = 1) -> None:
    """Drop the newest checkpoints, as if the process had been killed earlier."""
    import shutil

    for path in resume.all_checkpoints(run / "checkpoints")[:keep_step_index]:
        shutil.rmtree(path)


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    newest = resume.all_checkpoints(run / "checkpoints")
    rewind(run, 2)  # continue from the oldest kept checkpoint
    start = resume.latest_valid(run / "checkpoints").state["position"]
    assert start["batch"] > 0 or start["epoch"] > 0 and newest
    fit(run, resume="auto")
    assert same_weights(weights(run), weights(reference))
    assert same_weights(weights(run, "best"), weights(reference, "best"))
    assert eval_records(run) == eval_records(reference)


@pytest.mark.parametrize("seed", range(4))
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, seed, caplog):
    run = copy_run(reference, tmp_path / "run")
    newest = resume.all_checkpoints(run / "checkpoints")[0]
    target = newest / random.Random(seed).choice(["state.pt", "model.safetensors", "manifest.json"])
    data = target.read_bytes()
    target.write_bytes(data[: random.Random(seed).randrange(0, len(data))])
    fit(run, resume="auto")
    assert f"{newest.name}:" in caplog.text and "not used" in caplog.text
    assert same_weights(weights(run), weights(reference))


class Marker:
    """Unpickling this creates a file: the proof that code from a checkpoint ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def forge(path: Path, state_bytes: bytes) -> None:
    """Replace a checkpoint's state.pt and give it a matching manifest, as an attacker could."""
    (path / "state.pt").write_bytes(state_bytes)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"bytes": len(state_bytes), "sha256": resume._sha256(path / "state.pt")}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_and_runs_no_code(reference, tmp_path, caplog):
    run = copy_run(reference, tmp_path / "run")
    marker = tmp_path / "pwned"
    newest = resume.all_checkpoints(run / "checkpoints")[0]
    buffer = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Marker(str(marker))}, buffer)
    forge(newest, buffer.read_bytes())
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        resume.read(newest)
    fit(run, resume="auto")  # falls back to the previous checkpoint
    assert not marker.exists()
    assert "cannot be loaded safely" in caplog.text
    assert same_weights(weights(run), weights(reference))


def test_plain_pickle_weights_file_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    evil.write_bytes(pickle.dumps(Marker(str(marker))))
    from tocha.engine.checkpoint import read_state_dict

    with pytest.raises(UserError, match="safely"):
        read_state_dict(evil)
    assert not marker.exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(UserError) as err:
        fit(tmp_path / "run", optimizer="sgd", lr=1e6, momentum=0.9, log_every=2)
    message = str(err.value)
    assert "NaN or Inf" in message and "between step" in message and "lower the learning rate" in message
    for path in resume.all_checkpoints(tmp_path / "run" / "checkpoints"):
        assert resume.problem(path) is None
        state = resume.read(path)[1]
        assert torch.isfinite(state["position"]["loss_sum"])


def test_skip_mode_drops_non_finite_batches_and_counts_them(tmp_path):
    x = torch.randn(200, 5)
    x[7] = float("nan")
    y = torch.randint(0, 2, (200,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 2))
    val = (torch.randn(40, 5), torch.randint(0, 2, (40,)))
    result = tocha.fit(
        model,
        (x, y),
        val,
        epochs=2,
        batch_size=20,
        on_nonfinite="skip",
        threads=1,
        log={"tensorboard": False, "progress": False},
    )
    assert result.summary["skipped_nonfinite_batches"] == 2  # the batch holding sample 7, once per epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_ends_the_run_when_the_metric_stalls(tmp_path):
    result = fit(tmp_path / "run", epochs=8, early_stop={"patience": 2, "min_delta": 0.5})  # nothing gains 0.5
    evals = [r for r in result.history if r["kind"] == "eval"]
    assert len(evals) == 3 and "did not improve" in result.summary["early_stop"]


def cli(args: list, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tocha.cli", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_resume_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, words in (
        (["train", "--resume", "nowhere"], "does not exist"),
        (["train", "--resume", "empty"], "not a tocha run folder"),
        (["train", "--resume", "empty", "epochs=3"], "no other arguments"),
    ):
        proc = cli(args, tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and words in err and "Traceback" not in err, err


TRAIN = [
    "train",
    "data=digits",
    "model=cnn",
    "model.width=8",
    "epochs=12",
    "batch_size=32",
    "threads=1",
    "deterministic=true",
    "data.augment=[flip]",
    "log.tensorboard=false",
    "checkpoint.every_steps=1",
]


def newest_step(run: Path) -> int:
    found = resume.all_checkpoints(run / "checkpoints")
    return int(found[0].name.split("-")[1]) if found else -1


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until `proc` has written a checkpoint newer than the newest one now."""
    before, end = newest_step(run), time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if newest_step(run) > before:
            return True
        time.sleep(0.02)
    return False


def wait_for_temp_folder(run: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if any((run / "checkpoints").glob(".step-*")):
            return True
    return False


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_resume_finishes_identically(tmp_path):
    ref = cli([*TRAIN, "out=ref"], tmp_path)
    assert ref.wait(timeout=300) == 0
    proc = cli([*TRAIN, "out=run"], tmp_path)
    assert wait_for_checkpoint(tmp_path / "run", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "tocha train --resume run" in err and "Traceback" not in err
    done = cli(["train", "--resume", "run"], tmp_path)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert same_weights(weights(tmp_path / "run"), weights(tmp_path / "ref"))
    assert eval_records(tmp_path / "run") == eval_records(tmp_path / "ref")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """SIGKILL five times or more (mid-epoch, at epoch ends, inside checkpoint writes), resuming each time."""
    ref = cli([*TRAIN, "out=ref"], tmp_path)
    assert ref.wait(timeout=300) == 0
    rng = random.Random(1234)
    kills, resumed_from, caught_writing = 0, set(), False
    proc = cli([*TRAIN, "out=run"], tmp_path)
    while True:
        assert wait_for_checkpoint(tmp_path / "run", proc) or proc.poll() is not None
        if kills == 2:  # this one lands inside a checkpoint write: kill as soon as a temporary folder shows
            caught_writing = wait_for_temp_folder(tmp_path / "run", proc)
        else:
            time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.communicate()
        kills += 1
        resumed_from.add(resume.latest_valid(tmp_path / "run" / "checkpoints").path.name)
        proc = cli(["train", "--resume", "run"], tmp_path)
        if kills >= 6:
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert kills >= 5 and len(resumed_from) >= 5 and caught_writing
    assert same_weights(weights(tmp_path / "run"), weights(tmp_path / "ref"))
    assert eval_records(tmp_path / "run") == eval_records(tmp_path / "ref")


def test_disk_full_during_a_checkpoint_is_one_clear_error_and_earlier_checkpoints_stay(tmp_path, monkeypatch):
    import errno

    real_save, calls = torch.save, {"n": 0}

    def save_until_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(UserError) as err:
        fit(tmp_path / "run")
    assert "no space left on " in str(err.value) and "--resume" in str(err.value.fix)
    folder = tmp_path / "run" / "checkpoints"
    kept = resume.all_checkpoints(folder)
    assert kept and all(resume.problem(p) is None for p in kept)
    assert not list(folder.glob(".step-*"))  # no half-written folder left behind
