"""Several processes (DDP, gloo on CPU), run through the CLI as a user would: `tocha train --nproc 2`
(torchrun's launcher) or two processes started by hand with torchrun's environment variables.

Each multi-process run costs 15-30 s on a 2-core machine, so these tests are marked slow, except
the checks that fail before any process starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tocha.engine import resume

TOCHA = [sys.executable, "-m", "tocha"]
# An MLP (no dropout, no augmentation): every random draw is the same on 1 and 2 processes.
RUN = [
    "data=digits",
    "model=mlp",
    "epochs=2",
    "batch_size=64",
    "log_every=1",
    "deterministic=true",
    "threads=1",
    "log.tensorboard=false",
    "checkpoint.every_steps=5",
    "checkpoint.keep=20",
]
LOSS_TOLERANCE = 1e-5


def tocha(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TOCHA, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train.loss"] for r in records if r["kind"] == "train"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same training on 1 process and on 2 (same global batch, seed, deterministic=true)."""
    root = tmp_path_factory.mktemp("ddp")
    one = ok(tocha(["train", *RUN, "out=one"], root))
    two = ok(tocha(["train", "--nproc", "2", *RUN, "out=two"], root))
    return {"root": root, "one": root / "one", "two": root / "two", "one_out": one, "two_out": two}


@pytest.mark.slow
def test_two_processes_train_once_and_only_rank_0_speaks(runs):
    out = runs["two_out"]
    assert out.stdout.count("best val.accuracy") == 1 and out.stdout.count("test accuracy") == 1
    assert "[rank 1]" not in out.stderr and out.stderr.count("run folder two") == 1
    assert "processes  2 (DistributedDataParallel, gloo backend" in out.stderr
    assert "batch      64 samples per optimizer step (2 processes x 32)" in out.stderr
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert (summary["world_size"], summary["batch_size_global"], summary["batch_size_per_process"]) == (2, 64, 32)
    assert summary["steps"] == json.loads((runs["one"] / "summary.json").read_text())["steps"] == 2 * 18


@pytest.mark.slow
def test_loss_curve_of_two_processes_matches_one_process(runs):
    one, two = train_losses(runs["one"]), train_losses(runs["two"])
    assert len(one) == len(two) == 36
    worst = max(abs(a - b) for a, b in zip(one[:20], two[:20]))
    assert worst <= LOSS_TOLERANCE, worst
    assert max_weight_difference(runs["one"], runs["two"]) < 1e-4


@pytest.mark.slow
def test_evaluation_on_two_processes_equals_one_process_on_an_odd_split(runs):
    """The test split of digits has 359 samples: rank 1 gets one padded duplicate, which must not count."""
    from_training = json.loads((runs["two"] / "eval-test.json").read_text())
    assert from_training["n_samples"] == 359
    ok(tocha(["eval", "two", "--batch-size", "100"], runs["root"]))  # one process, other batch size
    single = json.loads((runs["two"] / "eval-test.json").read_text())
    for key in ("n_samples", "accuracy", "confusion", "per_class", "macro", "weighted", "top_k_accuracy"):
        assert from_training[key] == single[key], key
    assert from_training["loss"] == pytest.approx(single["loss"], abs=1e-6)


def rewind_to_mid_epoch(src: Path, dst: Path) -> int:
    """A copy of `src` whose newest checkpoint is a mid-epoch one (as if killed there); its step."""
    shutil.copytree(src, dst)
    for path in resume.all_checkpoints(dst / "checkpoints"):
        if int(path.name.split("-")[1]) > 25:
            shutil.rmtree(path)
    step = int(resume.all_checkpoints(dst / "checkpoints")[0].name.split("-")[1])
    assert step == 25 and resume.latest_valid(dst / "checkpoints").state["position"]["batch"] == 7
    return step


@pytest.mark.slow
@pytest.mark.parametrize(
    "start, resume_args",
    [("two", []), ("one", ["--nproc", "2"])],
    ids=["2-processes-resumed-on-1", "1-process-resumed-on-2"],
)
def test_a_checkpoint_resumes_on_another_number_of_processes(runs, start, resume_args):
    run = runs["root"] / f"{start}-resumed-{len(resume_args)}"
    rewind_to_mid_epoch(runs[start], run)
    ok(tocha(["train", "--resume", run.name, *resume_args], runs["root"]))
    # The continued run follows the uninterrupted one (any process count gives the same training).
    losses, reference = train_losses(run), train_losses(runs[start])
    assert len(losses) == len(reference) == 36
    assert max(abs(a - b) for a, b in zip(losses, reference)) <= LOSS_TOLERANCE
    assert max_weight_difference(run, runs[start]) < 1e-4


def test_bad_process_counts_are_refused_before_anything_starts(tmp_path):
    for nproc, words in (("0", "--nproc 0 is not a process count"), ("64", "--nproc 64 but only")):
        # An option between key=value items is fine: the keys after it still count.
        result = tocha(["train", "data=digits", "--nproc", nproc, "out=run"], tmp_path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "run").exists()


def test_a_time_budget_on_several_processes_is_refused_before_anything_starts(tmp_path):
    for budget in (["time_budget_s=60"], ["preset=best", "model=cnn"]):
        result = tocha(["train", "data=digits", *budget, "--nproc", "2", "out=run"], tmp_path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "plans the epochs of one process, not 2" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "run").exists()


def test_several_processes_without_a_rendezvous_address_are_refused(tmp_path):
    result = tocha(
        ["train", "data=digits", "out=run"],
        tmp_path,
        timeout=60,
        env={"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""},
    )
    assert result.returncode == 2
    assert "WORLD_SIZE=2 asks for several processes but MASTER_ADDR and MASTER_PORT are not set" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


BOOM = '''
import os
from torch import nn


class Boom(nn.Module):
    """Trains normally, except that rank 1 raises at its 8th training forward pass."""

    def __init__(self, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        if os.environ.get("RANK") == "1" and self.calls > 8:
            raise RuntimeError("boom on rank 1")
        return self.net(x)


def build(num_classes):
    return Boom(num_classes)
'''


@pytest.mark.slow
def test_a_rank_that_raises_is_named_and_every_process_exits(tmp_path):
    (tmp_path / "boom_model.py").write_text(BOOM)
    start = time.monotonic()
    result = tocha(
        [
            "train",
            "--nproc",
            "2",
            "data=digits",
            "model=boom_model:build",
            "epochs=5",
            "threads=1",
            "log.tensorboard=false",
            "dist.timeout_s=20",
            "out=run",
        ],
        tmp_path,
        timeout=120,
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "tocha train: error: rank 1 of 2 failed (exit code 1): RuntimeError: boom on rank 1" in result.stderr
    assert time.monotonic() - start < 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(cwd: Path, args: list[str]) -> list[subprocess.Popen]:
    """Two ranks started by hand with torchrun's variables (as on two machines): no agent to stop them."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [*TOCHA, "train", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def wait_for_training(run: Path, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = run / "metrics.jsonl"
        if log.exists() and log.read_text().count('"kind": "train"') >= 3:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended early: {[p.communicate()[1][-1500:] for p in procs]}")
        time.sleep(0.2)
    raise AssertionError("training did not start")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "stop"], ids=["rank-1-killed", "rank-1-frozen"])
def test_a_dead_or_frozen_rank_makes_rank_0_exit_within_the_timeout(tmp_path, how):
    """kill -9 closes rank 1's sockets; SIGSTOP leaves them open, so only the timeout can end the wait."""
    timeout_s = 8
    procs = start_ranks(
        tmp_path,
        [
            "data=digits",
            "model=mlp",
            "epochs=500",
            "threads=1",
            "log_every=1",
            "log.tensorboard=false",
            f"dist.timeout_s={timeout_s}",
            "out=run",
        ],
    )
    try:
        wait_for_training(tmp_path / "run", procs)
        procs[1].send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1, err[-2000:]
    assert "another process stopped answering" in err and "dist.timeout_s=8" in err, err[-2000:]
    assert "Traceback" not in err
    assert waited < timeout_s + 30, waited


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    """torchrun passes SIGTERM on; the ranks agree on a step (at a log read), rank 0 checkpoints there."""
    import re

    proc = subprocess.Popen(
        [
            *TOCHA,
            "train",
            "--nproc",
            "2",
            "data=digits",
            "model=mlp",
            "epochs=300",
            "log_every=5",
            "threads=1",
            "log.tensorboard=false",
            "out=run",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_training(tmp_path / "run", [proc])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "continue with: tocha train --resume run --nproc 2" in err and "Traceback" not in err
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", err).group(1))
    assert step % 5 == 0  # a log step: the only steps where ranks compare notes
    newest = resume.all_checkpoints(tmp_path / "run" / "checkpoints")[0]
    assert newest.name == f"step-{step:08d}" and resume.problem(newest) is None
