"""Knowledge distillation: the Hinton loss, the teacher's logits as targets (cached or per batch), `tocha distill`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

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


STUDENT = [
    "model=cnn",
    "model.width=4",
    "epochs=6",
    "batch_size=32",
    "deterministic=true",
    "checkpoint.every_steps=2",
    *QUIET,
]


def _cli(args: list, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [*TOCHA, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _newest_checkpoint(run) -> str:
    from tocha.engine import resume

    found = resume.all_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    return found[0].name if found else ""


def _wait_for_a_new_checkpoint(run, proc: subprocess.Popen, timeout: float = 120) -> bool:
    before, end = _newest_checkpoint(run), time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if _newest_checkpoint(run) > before:
            return True
        time.sleep(0.02)
    return False


def _last_weights(run) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _evals(run) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if "second" not in k and "wait" not in k} for r in records if r["kind"] == "eval"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("augment", [[], ["data.augment=[flip]"]], ids=["cached", "augmented"])
def test_a_distilled_student_resumes_bit_for_bit_after_kill_9(teacher_run, tmp_path, augment):
    """SIGKILL three times; `tocha distill --resume` ends with the weights and evaluations of an unbroken run,
    with the teacher's logits cached (no augmentation) and with the teacher run on each augmented batch."""
    args = ["distill", "--teacher", teacher_run, *STUDENT, *augment]
    ref = _cli([*args, "out=ref"], tmp_path)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    assert ("cached" in err) == (not augment), err
    kills, proc = 0, _cli([*args, "out=kd"], tmp_path)
    while kills < 3:
        assert _wait_for_a_new_checkpoint(tmp_path / "kd", proc), "no new checkpoint before the run ended"
        proc.kill()
        proc.communicate()
        kills += 1
        if kills == 1:  # `tocha train --resume` would drop the teacher: refused, nothing changed
            wrong = subprocess.run([*TOCHA, "train", "--resume", "kd"], cwd=tmp_path, capture_output=True, text=True)
            assert wrong.returncode == 2 and "tocha distill --resume kd" in wrong.stderr, wrong.stderr
            assert "Traceback" not in wrong.stderr
        proc = _cli(["distill", "--resume", "kd"], tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resume     from" in err
    torch.testing.assert_close(_last_weights(tmp_path / "kd"), _last_weights(tmp_path / "ref"), rtol=0, atol=0)
    assert _evals(tmp_path / "kd") == _evals(tmp_path / "ref")


def test_distill_resume_refuses_other_arguments_and_plain_runs(teacher_run, tmp_path):
    proc = subprocess.run(
        [*TOCHA, "distill", "--resume", str(teacher_run), "--alpha", "0.5"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--resume takes no other arguments, got --alpha" in proc.stderr, proc.stderr
    proc = subprocess.run([*TOCHA, "distill", "--resume", str(teacher_run)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a distilled student" in proc.stderr, proc.stderr
    assert f"tocha train --resume {teacher_run}" in proc.stderr
    proc = subprocess.run([*TOCHA, "distill", "epochs=1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--teacher RUN is required" in proc.stderr and "Traceback" not in proc.stderr
