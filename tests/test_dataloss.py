"""Data loss: overwrites remove only what tocha wrote, outputs never land on their source, one writer per run.

Real faults, no mocks: a second process that really holds the lock and is then killed with SIGKILL,
foreign files whose SHA-256 is compared before and after, a longer run overwritten by a shorter one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tocha import folders
from tocha import runfolder as rf
from tocha.cli import main as cli
from tocha.errors import UserError

QUICK = ["data=digits", "model=mlp", "epochs=1", "threads=1", "log.progress=false", "log.tensorboard=false"]


def tocha(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "tocha.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def sha256s(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 and modification time of every file under `folder` (names in `skip` left out)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def fit(out: Path, **options) -> Path:
    import tocha

    tocha.fit("mlp", "digits", threads=1, out=str(out), log={"tensorboard": False, "progress": False}, **options)
    return out


def step_names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").glob("step-*")}


# ---------------------------------------------------------------- one writer per run folder

HOLDER = """
import sys, time
from tocha import runfolder
runfolder.lock_run_dir(sys.argv[1])
print("READY", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a real second process that locks a run folder; yields (start, procs) and kills leftovers."""
    procs: list[subprocess.Popen] = []

    def start(run: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "READY"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_until_the_first_is_killed(tmp_path, holder):
    run = tmp_path / "run"
    first = tocha(["train", *QUICK, "out=run"], tmp_path)
    assert first.returncode == 0, first.stderr
    (run / "notes.txt").write_text("mine\n")
    before = sha256s(run, skip=(folders.LOCK,))
    proc = holder(run)
    for extra in (["overwrite=true"], ["resume=auto"]):
        refused = tocha(["train", *QUICK, "out=run", *extra], tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert f"run folder 'run' is in use by PID {proc.pid}" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert sha256s(run, skip=(folders.LOCK,)) == before  # the overwrite did not start cleaning
    # Readers never lock: eval works beside the writer.
    evaluated = tocha(["eval", "run"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = tocha(["train", *QUICK, "out=run", "overwrite=true"], tmp_path)
    assert again.returncode == 0, again.stderr  # kill -9 left no stale lock
    assert (run / "notes.txt").read_text() == "mine\n"


def test_the_lock_is_idempotent_in_one_process_and_released_on_request(tmp_path):
    lock = rf.lock_run_dir(tmp_path / "r")
    assert rf.lock_run_dir(tmp_path / "r" / ".." / "r") is lock and lock.held
    assert (tmp_path / "r" / folders.LOCK).read_text().strip() == str(os.getpid())
    probe = "import sys; from tocha import runfolder; runfolder.lock_run_dir(sys.argv[1]); print('LOCKED')"
    busy = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "r")], capture_output=True, text=True)
    assert busy.returncode != 0 and f"in use by PID {os.getpid()}" in busy.stderr
    lock.release()
    assert not lock.held
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "r")], capture_output=True, text=True)
    assert free.returncode == 0 and "LOCKED" in free.stdout, free.stderr


# ---------------------------------------------------------------- overwrite starts clean, keeps foreign files


def test_overwrite_after_a_longer_run_leaves_no_old_checkpoint(tmp_path):
    run = fit(tmp_path / "run", epochs=3)
    old_steps = step_names(run)
    assert len(old_steps) == 2  # checkpoint.keep
    (run / "notes.txt").write_text("mine\n")
    (run / "checkpoints" / "my-weights.pt").write_bytes(b"\x00" * 16)
    foreign = {k: v for k, v in sha256s(run).items() if k in ("notes.txt", "checkpoints/my-weights.pt")}
    with pytest.raises(UserError, match="already exists") as refused:
        fit(run, epochs=1)
    assert "overwrite=true" in str(refused.value)
    fit(run, epochs=1, overwrite=True)
    new_steps = step_names(run)
    assert len(new_steps) == 1 and not (new_steps & old_steps), (old_steps, new_steps)
    history = rf.read_history(run)
    assert history and max(r["epoch"] for r in history) <= 1
    assert {k: v for k, v in sha256s(run).items() if k in foreign} == foreign
    # The resume point is the new run's, not the old one's.
    from tocha.harness.run import find_resume_point

    assert find_resume_point(run).path.name in new_steps


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("thesis.tex", "data.csv"):
        (mine / name).write_text(name)
    before = sha256s(mine)
    for extra in ([], ["overwrite=true"], ["resume=auto"]):
        proc = tocha(["train", *QUICK, "out=mine", *extra], tmp_path)
        assert proc.returncode == 2, proc.stderr
        message = proc.stderr
        assert "not written by tocha" in message and "data.csv" in message and "thesis.tex" in message, message
        assert "overwrite" not in message.split("was not written")[1].replace("with or without overwrite", ""), (
            message
        )  # never recommended for a folder that is not tocha's
    assert sha256s(mine) == before and sorted(p.name for p in mine.iterdir()) == ["data.csv", "thesis.tex"]


# ---------------------------------------------------------------- compress and export never destroy their source


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, train_digits_cnn):
    return train_digits_cnn(tmp_path_factory.mktemp("dataloss") / "run", width=8, epochs=1)


@pytest.mark.parametrize(
    "out, words",
    [
        (".", ["is the run being compressed"]),
        ("..", ["holds the run being compressed"]),
        ("checkpoints", ["lies inside the run being compressed"]),
    ],
)
def test_compress_out_on_its_own_run_is_refused_and_nothing_changes(cnn_run, capsys, out, words):
    before = sha256s(cnn_run)
    assert (
        cli(["compress", str(cnn_run), "--out", str(cnn_run / out), "--overwrite", "--quantize", "int8-dynamic"]) == 2
    )
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err, err
    assert sha256s(cnn_run) == before


def test_compress_overwrite_keeps_foreign_files_and_refuses_foreign_folders(cnn_run, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.xlsx").write_bytes(os.urandom(64))
    before = sha256s(foreign)
    assert cli(["compress", str(cnn_run), "--out", str(foreign), "--overwrite", "--quantize", "int8-dynamic"]) == 2
    err = capsys.readouterr().err
    assert "not written by tocha" in err and "results.xlsx" in err and "pass --overwrite" not in err, err
    assert sha256s(foreign) == before

    out = tmp_path / "c"
    assert cli(["compress", str(cnn_run), "--out", str(out), "--quantize", "int8-dynamic"]) == 0
    assert json.loads((out / folders.MARKER).read_text())["kind"] == "compress"
    (out / "notes.txt").write_text("mine\n")
    notes = sha256s(out)["notes.txt"]
    capsys.readouterr()
    assert cli(["compress", str(cnn_run), "--out", str(out), "--quantize", "int8-dynamic"]) == 2
    assert "--overwrite" in capsys.readouterr().err  # tocha's own folder: the flag is the fix
    assert cli(["compress", str(cnn_run), "--out", str(out), "--overwrite", "--quantize", "int8-dynamic"]) == 0
    assert sha256s(out)["notes.txt"] == notes and (out / "compress.json").is_file()


def test_export_inside_its_run_is_refused_except_its_export_folder(cnn_run, tmp_path, capsys):
    before = sha256s(cnn_run)
    for out in (cnn_run / "model.onnx", cnn_run / "checkpoints" / "best.safetensors", cnn_run):
        assert cli(["export", str(cnn_run), "--out", str(out), "--overwrite"]) == 2
        assert "run being exported" in capsys.readouterr().err
    assert sha256s(cnn_run) == before
    assert cli(["export", str(cnn_run), "--overwrite"]) == 0  # the default, RUN/export/model.onnx
    assert json.loads((cnn_run / "export" / folders.MARKER).read_text())["kind"] == "export"
    target = cnn_run / "export" / "again.onnx"
    assert cli(["export", str(cnn_run), "--out", str(target)]) == 0
    assert folders.is_tocha_export(target) and not folders.is_tocha_export(cnn_run / "meta.json")


def test_distill_out_on_its_teacher_is_refused(cnn_run, tmp_path, capsys):
    before = sha256s(cnn_run)
    for out in (cnn_run, cnn_run.parent, cnn_run / "student"):
        assert (
            cli(
                [
                    "distill",
                    "--teacher",
                    str(cnn_run),
                    "model=mlp",
                    "epochs=1",
                    "threads=1",
                    f"out={out}",
                    "overwrite=true",
                ]
            )
            == 2
        )
        assert "teacher run" in capsys.readouterr().err
    assert sha256s(cnn_run) == before
