"""Real faults, no mocks: a full disk (a real small tmpfs), a read-only run folder (a read-only bind
mount), SIGTERM between summary.json and report.html, kill -9 during export and compress, and a
deterministic run under CPU load. Tests that need mount(8) and root skip cleanly without them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICK = ["data=digits", "model=mlp", "epochs=1", "threads=1", "log.progress=false", "log.tensorboard=false"]


def tocha(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "tocha.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, **kw)


def popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "tocha.cli", *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def one_error(proc, command: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"tocha {command}: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@contextlib.contextmanager
def mounted(point: Path, *options: str, source: str = "tmpfs"):
    point.mkdir(parents=True, exist_ok=True)
    kind = ["-t", "tmpfs"] if source == "tmpfs" else []
    done = subprocess.run(["mount", *kind, *options, source, str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def leave_free(mount: Path, kib: int) -> None:
    """Fill the file system at `mount` so that about `kib` KiB stay free."""
    st = os.statvfs(mount)
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (kib + 4) * 1024))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    done = tocha(["train", *QUICK, "out=run"], base)
    assert done.returncode == 0, done.stderr
    return base / "run"


# ---------------------------------------------------------------- a full disk


# free KiB on the tmpfs -> the file the run is writing when the disk fills (the model is fixed, so
# the order of writes is too: meta.json, metrics.jsonl, last/best weights, a checkpoint, the report)
FULL_AT = {0: ".tocha", 8: "meta.json", 16: "metrics.jsonl", 28: "last.safetensors", 40: "best.safetensors",
           80: "step-00000009", 140: "report.html"}  # fmt: skip


def test_a_full_disk_ends_every_write_path_with_one_message(tmp_path):
    seen = {}
    for kib, file in FULL_AT.items():
        with mounted(tmp_path / f"m{kib}", "-o", "size=400k") as mount:
            leave_free(mount, kib)
            proc = tocha(["train", *QUICK, f"out={mount / 'run'}"], tmp_path)
            line = one_error(proc, "train")
            assert f"no space left on {mount} while writing {mount / 'run'}" in line, line
            seen[kib] = line
            assert file in line, line
            checkpoints = sorted(p.name for p in (mount / "run" / "checkpoints").glob("step-*"))
            if checkpoints:
                assert f"the newest complete checkpoint is {mount / 'run' / 'checkpoints' / checkpoints[-1]}" in line
                assert f"tocha train --resume {mount / 'run'}" in line
            elif file != ".tocha":  # the marker is written before the run starts: no checkpoint to speak of
                assert "no checkpoint was written yet" in line
            leftovers = [p.name for p in (mount / "run").rglob("*") if ".tmp" in p.name]
            assert not leftovers, leftovers  # a failed atomic write removes its temporary file
    assert len(seen) == len(FULL_AT)


def test_export_and_compress_into_a_full_disk(run_dir, tmp_path):
    with mounted(tmp_path / "m", "-o", "size=64k") as mount:
        leave_free(mount, 4)
        proc = tocha(["export", run_dir, "--out", mount / "model.onnx"], tmp_path)
        assert f"no space left on {mount}" in one_error(proc, "export") or "No space left" in proc.stderr
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]  # no temporary left behind
        proc = tocha(["compress", run_dir, "--out", mount / "c"], tmp_path)
        line = one_error(proc, "compress")
        assert "no space left" in line.lower(), line


# ---------------------------------------------------------------- a read-only run folder


def test_eval_on_a_read_only_run_prints_the_metrics_and_says_the_json_was_not_written(run_dir, tmp_path):
    (run_dir / "eval-test.json").unlink(missing_ok=True)
    with mounted(tmp_path / "ro", "--bind", source=str(run_dir)) as ro:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=False).returncode != 0:
            pytest.skip("cannot remount read-only")
        for extra in ([], ["--json"]):
            proc = tocha(["eval", ro, *extra], tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert "Traceback" not in proc.stderr
            assert "test (best checkpoint)" in proc.stdout or '"accuracy"' in proc.stdout, proc.stdout
            assert f"eval-test.json was not written in {ro}: Read-only file system" in proc.stderr, proc.stderr
    assert not (run_dir / "eval-test.json").exists()


# ---------------------------------------------------------------- signals and kill -9


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.002)
    return False


def test_sigterm_after_the_summary_but_before_the_report_exits_143_with_the_resume_command(tmp_path):
    run = tmp_path / "run"
    proc = popen(["train", *QUICK, "out=run"], tmp_path)
    found = wait_for(lambda: (run / "summary.json").exists(), proc)
    if not found or (run / "report.html").exists():
        proc.wait()
        pytest.skip("the run wrote its report before the signal could be sent")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "tocha train: stopped by SIGTERM" in err and "continue with: tocha train --resume run" in err, err
    again = tocha(["train", "--resume", "run"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert (run / "report.html").is_file()


def test_a_killed_export_leaves_no_junk_a_later_export_does_not_clean(run_dir, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    proc = popen(["export", run_dir, "--out", out / "model.onnx"], tmp_path)
    assert wait_for(lambda: any(p.name.startswith(".model.tmp-") for p in out.iterdir()), proc), "no temporary seen"
    proc.kill()
    proc.wait()
    assert not (out / "model.onnx").exists()
    again = tocha(["export", run_dir, "--out", out / "model.onnx"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.parity.json"]


def test_a_killed_compress_leaves_only_temporary_names(run_dir, tmp_path):
    out = tmp_path / "c"
    proc = popen(["compress", run_dir, "--out", out], tmp_path)
    assert wait_for(lambda: out.is_dir() and any("int8" in p.name for p in out.iterdir()), proc, 300), "no int8 seen"
    proc.kill()
    proc.wait()
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "int8" in n and not n.startswith(".")], names  # nothing unjudged
    again = tocha(["compress", run_dir, "--out", out, "--overwrite"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- reproducible under load


def test_deterministic_runs_are_bit_identical_under_cpu_load(tmp_path):
    argv = ["train", "data=digits", "model=mlp", "epochs=2", "deterministic=true", "seed=7", "threads=auto"]
    argv += ["log.progress=false", "log.tensorboard=false"]
    quiet = tocha([*argv, "out=a"], tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
    ]  # one busy loop per core: a measured thread count would come out differently
    try:
        loaded = tocha([*argv, "out=b"], tmp_path)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert loaded.returncode == 0, loaded.stderr
    assert "deterministic=true" in quiet.stderr and "not measured" in quiet.stderr

    def digest(run: str) -> str:
        return hashlib.sha256((tmp_path / run / "checkpoints" / "best.safetensors").read_bytes()).hexdigest()

    assert digest("a") == digest("b")
