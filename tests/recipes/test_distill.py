"""Knowledge distillation: the Hinton loss, the teacher's logits as targets (cached or per batch), `tocha distill`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tocha.recipes.distill import Teacher

TOCHA = [sys.executable, "-m", "tocha.cli"]
QUIET = ["log.tensorboard=false", "log.progress=false", "threads=1"]


def test_kd_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 1])
    packed = torch.cat([y.float()[:, None], teacher], dim=1)
    t, alpha = 3.0, 0.6
    loss = Teacher(torch.nn.Identity(), t, alpha).loss_fn()(logits, packed)
    p_t, p_s = F.softmax(teacher / t, 1), F.softmax(logits / t, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -F.log_softmax(logits, 1)[torch.arange(2), y].mean()
    assert math.isclose(float(loss), float(alpha * t * t * kl + (1 - alpha) * ce), rel_tol=1e-6)
    hits, n = Teacher.correct_fn(logits, packed)
    assert (int(hits), n) == (1, 2)  # argmax 0 (right), argmax 0 or 1 tie -> 0 (wrong)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, train_digits_cnn):
    out = tmp_path_factory.mktemp("kd") / "teacher"
    return train_digits_cnn(out, width=16, epochs=8)


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_cached_and_per_batch_teacher_logits_train_the_same_student(teacher_run, augment, caplog):
    """Caching is an optimisation only: with nothing random in the batches, both paths give the same weights."""
    from tocha import config
    from tocha.harness import train
    from tocha.recipes.distill import load_teacher
    from tocha.tasks import create

    results = []
    for cache in ("auto", False):
        model, meta = load_teacher(teacher_run, torch.device("cpu"))
        cfg = config.load(
            None, ["data=digits", "model.width=4", "epochs=2", "deterministic=true", f"data.augment={augment}", *QUIET]
        )
        with caplog.at_level("INFO", logger="tocha"):
            results.append(
                train(cfg, task=create("classify", teacher=Teacher(model, 4.0, 0.7, cache, meta))).model.state_dict()
            )
    assert ("teacher logits cached" in caplog.text) is (augment == "none")
    same = all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert same, "cached and per-batch teacher logits trained different students"


def test_cache_true_on_augmented_batches_is_a_clear_error(teacher_run, tmp_path):
    proc = subprocess.run(
        [
            *TOCHA,
            "distill",
            "--teacher",
            str(teacher_run),
            "--cache",
            "true",
            "data.augment=flip",
            "model.width=4",
            "epochs=1",
            *QUIET,
            f"out={tmp_path / 'kd'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "cannot be cached" in proc.stderr and "Traceback" not in proc.stderr


def test_tocha_distill_end_to_end(teacher_run, tmp_path):
    proc = subprocess.run(
        [
            *TOCHA,
            "distill",
            "--teacher",
            str(teacher_run),
            "--student",
            "model=cnn",
            "model.width=4",
            "epochs=2",
            "--temperature",
            "4",
            "--alpha",
            "0.7",
            *QUIET,
            f"out={tmp_path / 'kd'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "teacher" in proc.stderr
    meta = json.loads((tmp_path / "kd" / "meta.json").read_text())
    assert meta["distilled_from"]["temperature"] == 4 and meta["model"]["width"] == 4
    assert meta["classes"] == json.loads((teacher_run / "meta.json").read_text())["classes"]  # the teacher's data
    # The student is an ordinary run: tocha eval works on it.
    ev = subprocess.run([*TOCHA, "eval", str(tmp_path / "kd")], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--alpha", "1.5"], ["--alpha", "between 0 and 1"]),
        (["--temperature", "0"], ["--temperature", "positive"]),
        (["image_size=16"], ["other data", "image_size 8 vs 16"]),
        (["epochs"], ["unexpected argument 'epochs'"]),
    ],
)
def test_bad_distill_inputs(teacher_run, tmp_path, args, words):
    proc = subprocess.run(
        [*TOCHA, "distill", "--teacher", str(teacher_run), *args, "epochs=1", *QUIET, f"out={tmp_path / 'kd'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert all(w in proc.stderr for w in words) and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "kd" / "best.safetensors").exists()


def test_missing_teacher_run_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [*TOCHA, "distill", "--teacher", str(tmp_path / "nope"), "epochs=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_a_language_model_teacher_is_a_clear_error(tmp_path):
    run = tmp_path / "lm"
    run.mkdir()
    (run / "config.yaml").write_text("task: charlm\n")
    (run / "meta.json").write_text('{"task": "charlm", "model": {"name": "charlm"}}')  # as a real one: task and model
    proc = subprocess.run(
        [*TOCHA, "distill", "--teacher", str(run), "epochs=1"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "not an image classifier" in proc.stderr and "Traceback" not in proc.stderr
