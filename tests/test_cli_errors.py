"""User errors on the command line: exit code 2, one message on stderr, no traceback, nothing written.

Each case runs `tocha` in a subprocess in its own folder, which holds a marker file; the folder's
files (names, sizes, contents, modification times) must be the same afterwards. Cases that need
torch (data loading, model building, run folders) run through a two-worker pool, started once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

TOCHA = [sys.executable, "-m", "tocha.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["COLUMNS"] = "120"
    return env


def tocha(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TOCHA, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=300)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder`: kind, size, modification time and content hash."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.name == ".tocha.lock":  # the writer lock: a refused train may take it, which writes its PID
            continue
        st = path.lstat()
        rel = str(path.relative_to(folder))
        if path.is_dir():
            state[rel] = ("dir",)
        else:
            state[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def new_case(base: Path, name: str) -> Path:
    folder = base / name
    (folder / "keep").mkdir(parents=True)
    (folder / "keep" / "marker.txt").write_text("do not touch\n")
    return folder


def error_message(proc: subprocess.CompletedProcess, command: str = "train") -> str:
    """The one error message, after checking exit code 2, the prefix, and the absence of a traceback."""
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    assert proc.stderr.startswith(f"tocha {command}: error: "), detail
    assert proc.stderr.count(f"tocha {command}: error:") == 1, detail
    assert [line for line in proc.stderr.splitlines() if line.startswith("tocha ")] == [proc.stderr.splitlines()[0]], (
        detail
    )
    assert proc.stdout == "", detail
    return proc.stderr


class Case:
    """A folder, its state before the command, the command's result, and the state afterwards."""

    def __init__(self, folder: Path, args: list[str]) -> None:
        self.folder, self.args = folder, args
        self.before = snapshot(folder)
        self.proc = tocha(args, folder)
        self.after = snapshot(folder)

    def unchanged(self) -> bool:
        return self.before == self.after


def check(folder: Path, args: list[str], command: str = "train") -> str:
    return _check_case(Case(folder, args), command)


def _check_case(case: Case, command: str = "train") -> str:
    message = error_message(case.proc, command)
    assert case.unchanged(), f"files changed:\nbefore {case.before}\nafter  {case.after}"
    return message


# ---------------------------------------------------------------- the cases that need torch, in a pool


def _existing_run_folder(base: Path) -> dict:
    """Refuse an existing non-empty run folder; then train into it with overwrite=true; then predict a missing file."""
    folder = new_case(base, "existing")
    run = folder / "run"
    run.mkdir()
    (run / ".tocha").write_text('{"kind": "run"}\n')  # an earlier tocha run folder (a foreign one is refused)
    (run / "marker.txt").write_text("an earlier run\n")
    refused = Case(folder, ["train", "data=digits", "model=mlp", "epochs=1", "out=run"])
    marker_after_refusal = (run / "marker.txt").read_text()
    accepted = tocha(["train", "data=digits", "model=mlp", "epochs=1", "out=run", "overwrite=true"], folder)
    missing = Case(folder, ["predict", "run", "missing.png"]) if accepted.returncode == 0 else None
    return {
        "folder": folder,
        "run": run,
        "refused": refused,
        "marker_after_refusal": marker_after_refusal,
        "accepted": accepted,
        "missing": missing,
    }


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {}

    def submit(name: str, args: list[str], setup=None) -> None:
        folder = new_case(base, name)
        if setup:
            setup(folder)
        futures[name] = pool.submit(Case, folder, args)

    futures["existing"] = pool.submit(_existing_run_folder, base)
    submit("unknown_model", ["train", "data=digits", "model=resnet81", "epochs=1", "out=run"])
    submit(
        "out_under_file",
        ["train", "data=digits", "model=mlp", "epochs=1", "out=afile/run"],
        setup=lambda f: (f / "afile").write_text("a regular file\n"),
    )
    submit(
        "empty_imagefolder",
        ["train", "data=imagefolder", "data.root=empty", "model=mlp", "out=run"],
        setup=lambda f: (f / "empty").mkdir(),
    )
    submit("fashion_root", ["train", "data=fashion-mnist", "data.root=/nonexistent", "out=run"])
    submit("eval_missing_run", ["eval", "/nonexistent"])
    yield {name: f for name, f in futures.items()}
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- config errors (no torch needed)


def test_unknown_key_suggests_the_right_one(tmp_path):
    message = check(new_case(tmp_path, "c"), ["train", "epoch=3"])
    assert "unknown config key 'epoch'" in message
    assert "did you mean 'epochs'" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lr=-1", ["lr", "out of range", "> 0"]),
        ("batch_size=0", ["batch_size", "out of range", ">= 1"]),
        ("data.val_fraction=1", ["data.val_fraction", "out of range", "< 1"]),
        ("precision=fp8", ["precision", "'fp8'", "auto, fp32, bf16, fp16"]),
        ("epochs=three", ["epochs", "'three' is not a valid int"]),
    ],
)
def test_bad_value_names_the_key_and_what_is_allowed(tmp_path, override, expected):
    message = check(new_case(tmp_path, "c"), ["train", override])
    for text in expected:
        assert text in message


def test_several_errors_are_reported_together(tmp_path):
    message = check(new_case(tmp_path, "c"), ["train", "epoch=3", "lr=-1", "precision=fp8", "batch_size=0"])
    assert "4 problems" in message
    for text in ("'epoch'", "did you mean 'epochs'", "config key lr", "'fp8'", "config key batch_size"):
        assert text in message
    assert len([line for line in message.splitlines() if line.strip().startswith("- ")]) == 4


def test_unknown_dataset(tmp_path):
    message = check(new_case(tmp_path, "c"), ["train", "data=digit"])
    assert "'digit'" in message and "data.name" in message
    assert "fashion-mnist, digits, imagefolder" in message
    assert "did you mean 'digits'" in message


def test_yaml_syntax_error_gives_the_line(tmp_path):
    folder = new_case(tmp_path, "c")
    (folder / "bad.yaml").write_text("epochs: 3\nlr: 0.1\ndata:\n  name: digits\n root: x\n")
    message = check(folder, ["train", "bad.yaml", "epochs=1"])
    assert "YAML" in message and "bad.yaml" in message
    assert "line 5" in message


def test_missing_config_file(tmp_path):
    message = check(new_case(tmp_path, "c"), ["train", "nothere.yaml"])
    assert "nothere.yaml" in message and "does not exist" in message


def test_eval_and_predict_option_checks(tmp_path):
    folder = new_case(tmp_path, "c")
    assert "--batch-size" in check(folder, ["eval", "somewhere", "--batch-size", "0"], command="eval")
    assert "--top-k" in check(folder, ["predict", "somewhere", "x.png", "--top-k", "0"], command="predict")


def test_debug_after_the_command_shows_a_traceback(tmp_path):
    proc = tocha(["train", "--debug", "epoch=3"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "did you mean 'epochs'" in proc.stderr


def test_debug_before_the_command_shows_a_traceback(tmp_path):
    """`tocha --help` lists --debug as a global option: `tocha --debug train ...` must honour it too."""
    proc = tocha(["--debug", "train", "epoch=3"], tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- errors found after loading data / torch


def _heavy_error(heavy, name: str, command: str = "train") -> str:
    return _check_case(heavy[name].result(), command)


def test_unknown_model_suggests_resnet18(heavy):
    message = _heavy_error(heavy, "unknown_model")
    assert "unknown model 'resnet81'" in message
    assert "did you mean 'resnet18'" in message


def test_fashion_mnist_missing_root(heavy):
    message = _heavy_error(heavy, "fashion_root")
    assert "/nonexistent" in message and "not found" in message


def test_empty_image_folder(heavy):
    message = _heavy_error(heavy, "empty_imagefolder")
    assert "empty" in message and "class sub-folders" in message


def test_out_not_writable(heavy):
    """out=afile/run, where afile is a regular file: the run folder cannot be created."""
    message = _heavy_error(heavy, "out_under_file")
    assert "cannot write the run folder 'afile/run'" in message and "config key out" in message


def test_eval_missing_run(heavy):
    message = _heavy_error(heavy, "eval_missing_run", command="eval")
    assert "/nonexistent" in message and "does not exist" in message


def test_existing_run_folder_is_refused(heavy):
    result = heavy["existing"].result()
    message = _check_case(result["refused"])
    assert "already exists" in message and "overwrite=true" in message
    assert result["marker_after_refusal"] == "an earlier run\n"


def test_overwrite_true_is_then_accepted(heavy):
    result = heavy["existing"].result()
    accepted = result["accepted"]
    assert accepted.returncode == 0, accepted.stderr
    run = result["run"]
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "best.safetensors").is_file()
    assert (run / "marker.txt").read_text() == "an earlier run\n"


def test_predict_missing_image(heavy):
    result = heavy["existing"].result()
    assert result["missing"] is not None, "the overwrite run failed, so predict could not be checked"
    message = _check_case(result["missing"], "predict")
    assert "missing.png" in message and "does not exist" in message
