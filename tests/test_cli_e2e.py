"""End-to-end checks of the `tocha` command line, run as a user runs it: in a subprocess, in a fresh folder.

One digits run (the expensive part) is trained once per module; the commands that only need it
(eval, predict, feeding the config back) and the independent image-folder run go through a
two-worker pool so both CPU cores are busy while the in-process checks run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOCHA = [sys.executable, "-m", "tocha.cli"]
TOCHA_SCRIPT = Path(sys.executable).parent / "tocha"
DIGITS_EPOCHS = 30
RUN_FILES = (
    "config.yaml",
    "env.json",
    "meta.json",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "report.html",
    "curves.png",
    "confusion_matrix.png",
    "checkpoints/best.safetensors",
    "checkpoints/last.safetensors",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["COLUMNS"] = "120"
    return env


def tocha(args: list[str], cwd: Path, *, cmd: list[str] = TOCHA, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# ---------------------------------------------------------------- shared work


def _write_image_folder(root: Path) -> None:
    """2 classes, bright vs dark 16x16 grayscale noise: 12 training and 4 test images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for cls, (low, high) in (("bright", (180, 256)), ("dark", (0, 76))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(low, high, (16, 16), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{cls}{i}.png")


def _digit_images(folder: Path) -> list[tuple[Path, int]]:
    """Six digits from the fixed test portion of sklearn's digits as 8x8 grayscale PNGs, with labels."""
    import torch
    from sklearn.datasets import load_digits

    from tocha.data.digits import TEST_FRACTION, TEST_SEED
    from tocha.data.splits import stratified_split

    bunch = load_digits()
    _, held = stratified_split(torch.from_numpy(bunch.target).to(torch.int64), TEST_FRACTION, TEST_SEED)
    out = []
    for n, index in enumerate(held.tolist()[:6]):
        pixels = np.clip(np.round(bunch.images[index] * 255 / 16), 0, 255).astype(np.uint8)
        path = folder / f"digit{n}.png"
        Image.fromarray(pixels, mode="L").save(path)
        out.append((path, int(bunch.target[index])))
    return out


class Work:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.futures: dict[str, Future] = {}

    def submit(self, name: str, args: list[str], **kw) -> None:
        self.futures[name] = self.pool.submit(tocha, args, self.root, **kw)

    def result(self, name: str) -> subprocess.CompletedProcess:
        if name not in self.futures:
            pytest.fail(f"'{name}' was not run: the digits training run it needs failed")
        return self.futures[name].result()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    _write_image_folder(root / "shapes")
    w = Work(root)
    w.submit("digits", ["train", "data=digits", "model=mlp", f"epochs={DIGITS_EPOCHS}", "out=runs/digits"])
    w.submit(
        "folder",
        [
            "train",
            "data=imagefolder",
            f"data.root={root / 'shapes'}",
            "model=cnn",
            "image_size=16",
            "epochs=3",
            "batch_size=8",
            "out=runs/folder",
        ],
    )
    w.submit("env", ["env"], cmd=[str(TOCHA_SCRIPT)])
    yield w
    w.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def digits(work) -> dict:
    """The finished digits run; once it exists, the commands that use it are queued."""
    proc = work.result("digits")
    run = work.root / "runs" / "digits"
    summary = json.loads((run / "summary.json").read_text()) if proc.returncode == 0 else None
    if proc.returncode == 0:
        # train writes eval-test.json too: remove it so that the eval command has to write it again
        (run / "eval-test.json").unlink()
        images = _digit_images(work.root)
        (work.root / "a.png").write_bytes(images[0][0].read_bytes())
        (work.root / "b.png").write_bytes(images[1][0].read_bytes())
        work.submit("eval", ["eval", "runs/digits"])
        work.submit("eval_val", ["eval", "runs/digits", "--split", "val"])
        work.submit("eval_json", ["eval", "runs/digits", "--checkpoint", "last", "--json"])
        work.submit("predict", ["predict", "runs/digits", "a.png", "b.png"])
        work.submit("predict_json", ["predict", "runs/digits", *[p.name for p, _ in images], "--json"])
        work.submit("again", ["train", "runs/digits/config.yaml", "epochs=1", "out=runs/again"])
    else:
        images = []
    return {"proc": proc, "run": run, "summary": summary, "images": images}


# ---------------------------------------------------------------- help and imports (no training needed)


def test_help_exits_zero_and_lists_commands(work):
    proc = ok(tocha(["--help"], work.root))
    for command in ("train", "eval", "predict", "env"):
        assert command in proc.stdout
    ok(tocha(["--version"], work.root))


def test_train_help_lists_every_config_key_with_its_default(work):
    from tocha.config import schema

    text = ok(tocha(["train", "--help"], work.root)).stdout
    specs = schema()
    assert {"data.val_fraction", "grad_accum_steps", "epochs", "model.name"} <= {s.key for s in specs}
    for spec in specs:
        default = "none" if spec.default is None else spec.default
        if isinstance(default, list):
            default = "[" + ",".join(map(str, default)) + "]"
        pattern = rf"^\s+{re.escape(spec.key)}\s+\S+\s+default {re.escape(str(default))}(\s|$)"
        assert re.search(pattern, text, re.MULTILINE), f"{spec.key} (default {default}) not in train --help"


def test_help_does_not_import_torch(work):
    code = (
        "import contextlib, io, sys\n"
        "from tocha import cli\n"
        "for argv in (['--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            cli.main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, e.code\n"
        "    assert 'usage:' in out.getvalue()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn'))\n"
        "print('HEAVY', heavy[:5])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=work.root, capture_output=True, text=True, env=_env())
    ok(proc)
    assert "HEAVY []" in proc.stdout, proc.stdout

    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tocha.cli", "--help"],
        cwd=work.root,
        capture_output=True,
        text=True,
        env=_env(),
    )
    ok(imports)
    assert "tocha.cli.train" in imports.stderr  # the import log is really there (every command's parser is built)
    top_level = [line.rsplit("|", 1)[-1] for line in imports.stderr.splitlines() if line.startswith("import time:")]
    assert not [m for m in top_level if m.strip() in ("torch", "torchvision")], "tocha --help imports torch"


def test_env_prints_versions_and_device(work):
    import torch

    proc = ok(work.result("env"))
    assert torch.__version__ in proc.stdout
    assert re.search(r"^torch\s+" + re.escape(torch.__version__) + "$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\s*device\s+(cpu|cuda|mps)\b", proc.stdout, re.MULTILINE), proc.stdout


# ---------------------------------------------------------------- Python API (in-process)


def _blobs(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 2.0
    return x.float(), y


def _tiny_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def test_fit_on_tensors_learns_and_writes_nothing_without_out(tmp_path, monkeypatch):
    import tocha

    monkeypatch.chdir(tmp_path)
    x, y = _blobs(400, seed=1)
    result = tocha.fit(_tiny_net(), (x, y), epochs=2, batch_size=16, lr=0.05)
    assert type(result).__name__ == "FitResult"
    assert result.run_dir is None
    assert result.val is not None and result.val.accuracy >= 0.95
    assert len(result.history) >= 2
    assert list(tmp_path.iterdir()) == []

    x_test, y_test = _blobs(200, seed=2)
    evaluation = tocha.evaluate(result.model, (x_test, y_test))
    assert evaluation.metrics.n_samples == 200
    assert evaluation.metrics.accuracy >= 0.95
    assert list(tmp_path.iterdir()) == []


def test_evaluate_reports_accuracy_of_a_bad_model_too():
    """evaluate really measures: a model that always says class 0 is right about half the time."""
    import torch
    from torch import nn

    import tocha

    x, y = _blobs(200, seed=3)
    constant = nn.Linear(2, 2)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0]))
    assert tocha.evaluate(constant, (x, y)).metrics.accuracy == pytest.approx(0.5)


# ---------------------------------------------------------------- the digits run


def test_train_digits_writes_a_complete_run_folder(digits):
    ok(digits["proc"])
    run = digits["run"]
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    assert not missing, f"missing from the run folder: {missing}"
    assert "report.html" in digits["proc"].stdout and "test accuracy" in digits["proc"].stdout


def test_summary_has_best_test_and_speed(digits):
    summary = digits["summary"]
    assert summary is not None
    best = summary["best"]
    assert best["metric"] == "val.accuracy"
    assert 1 <= best["epoch"] <= DIGITS_EPOCHS
    assert 0.85 <= best["value"] <= 1.0
    assert summary["test"]["test.accuracy"] >= 0.90
    assert summary["wall_seconds"] > 0
    assert summary["train_samples_per_second"] > 0
    assert summary["peak_memory_mb"] > 0


def test_metrics_jsonl_has_train_and_eval_records(digits):
    lines = (digits["run"] / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    kinds = [r["kind"] for r in records]
    assert set(kinds) <= {"train", "eval"}
    assert kinds.count("eval") == DIGITS_EPOCHS  # one evaluation per epoch
    assert "train" in kinds
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == list(range(1, DIGITS_EPOCHS + 1))
    assert all("val.accuracy" in r for r in evals)
    best = digits["summary"]["best"]
    assert max(r["val.accuracy"] for r in evals) == pytest.approx(best["value"])
    csv_lines = (digits["run"] / "metrics.csv").read_text().splitlines()
    assert "val.accuracy" in csv_lines[0] and len(csv_lines) == len(records) + 1


def test_report_references_plots(digits):
    html = (digits["run"] / "report.html").read_text()
    assert 'data-file="curves.png"' in html and 'src="data:image/png;base64,' in html  # self-contained
    assert "confusion_matrix.png" in html
    assert f">{digits['summary']['test']['test.accuracy']:.4f}<" in html


def test_progress_without_tty_is_one_plain_line_per_epoch(digits):
    stderr = digits["proc"].stderr
    assert "\r" not in stderr
    epoch_lines = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == DIGITS_EPOCHS
    assert [line.split()[1] for line in epoch_lines] == [f"{i}/{DIGITS_EPOCHS}" for i in range(1, DIGITS_EPOCHS + 1)]


def _printed_accuracy(stdout: str, split: str) -> str:
    match = re.search(rf"^{split} \(best checkpoint\): accuracy (\d\.\d{{4}})", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


def test_eval_matches_the_training_summary(digits, work):
    proc = ok(work.result("eval"))
    expected = digits["summary"]["test"]["test.accuracy"]
    assert _printed_accuracy(proc.stdout, "test") == f"{expected:.4f}"
    written = json.loads((digits["run"] / "eval-test.json").read_text())
    assert written["split"] == "test"
    assert written["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert written["n_samples"] == 359


def test_eval_val_split(digits, work):
    proc = ok(work.result("eval_val"))
    expected = digits["summary"]["val"]["val.accuracy"]
    assert _printed_accuracy(proc.stdout, "val") == f"{expected:.4f}"
    written = json.loads((digits["run"] / "eval-val.json").read_text())
    assert written["split"] == "val" and written["accuracy"] == pytest.approx(expected, abs=1e-4)


def test_eval_json_prints_what_it_writes(digits, work):
    proc = ok(work.result("eval_json"))
    printed = json.loads(proc.stdout)  # the whole of stdout is the JSON, no table around it
    assert printed == json.loads((digits["run"] / "eval-test-last.json").read_text())
    assert printed["split"] == "test" and printed["checkpoint"] == "last" and 0 <= printed["accuracy"] <= 1
    assert printed["n_samples"] == 359


def test_predict_prints_top3_per_file(digits, work):
    proc = ok(work.result("predict"))
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    for line, name in zip(lines, ("a.png", "b.png")):
        assert line.startswith(name)
        pairs = re.findall(r"(\d) (\d\.\d{3})", line[len(name) :])
        assert len(pairs) == 3, line
        probabilities = [float(p) for _, p in pairs]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len({c for c, _ in pairs}) == 3


def test_predict_json_is_sorted_and_mostly_right(digits, work):
    proc = ok(work.result("predict_json"))
    predictions = json.loads(proc.stdout)
    images = digits["images"]
    assert [p["file"] for p in predictions] == [path.name for path, _ in images]
    for p in predictions:
        probabilities = [t["probability"] for t in p["top"]]
        assert len(probabilities) == 3
        assert all(0 <= q <= 1 for q in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-5
        assert all(t["class"] in [str(i) for i in range(10)] for t in p["top"])
    right = sum(p["top"][0]["class"] == str(label) for p, (_, label) in zip(predictions, images))
    assert right >= 1, predictions


def test_resolved_config_can_be_fed_back(digits, work):
    proc = ok(work.result("again"))
    again = work.root / "runs" / "again"
    summary = json.loads((again / "summary.json").read_text())
    assert summary["epochs"] == 1
    config_text = (again / "config.yaml").read_text()
    assert "out: runs/again" in config_text and "epochs: 1" in config_text
    # the original run is untouched by the second one
    assert json.loads((digits["run"] / "summary.json").read_text())["epochs"] == DIGITS_EPOCHS
    epoch_lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 1/1 ")


# ---------------------------------------------------------------- an image-folder run


def test_image_folder_run(work):
    proc = ok(work.result("folder"))
    run = work.root / "runs" / "folder"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["test.accuracy"] >= 0.75
    meta = json.loads((run / "meta.json").read_text())
    assert meta["classes"] == ["bright", "dark"] and meta["image_size"] == 16
    test_eval = json.loads((run / "eval-test.json").read_text())
    assert test_eval["n_samples"] == 8  # the test/ folder, not a split of train/
    html = (run / "report.html").read_text()
    assert "bright" in html and "dark" in html
    assert len([line for line in proc.stderr.splitlines() if line.startswith("epoch ")]) == 3
