"""Knowledge distillation as a task of the one training loop (Hinton et al., 2015).

The student learns from the labels and from the teacher's softened class probabilities:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

(T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.) Nothing here
loops over data: the teacher's logits travel with the labels as the batch target, packed as one
float tensor [B, 1 + K] (label, then logits), so the engine's step, accumulation, checkpoints and
resume are the same as for plain classification. Without augmentation the teacher's logits are
computed once for the whole resident training split (the cache); with augmentation the teacher
sees every augmented batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tocha.errors import UserError

log = logging.getLogger("tocha")
TEMPERATURE, ALPHA = 4.0, 0.9  # the defaults (alpha on the soft loss), as the published recipes use them


@dataclass
class Teacher:
    model: nn.Module
    temperature: float = TEMPERATURE
    alpha: float = ALPHA
    cache: bool | str = "auto"  # precompute logits when the training batches allow it
    meta: dict | None = None  # the teacher run's meta.json: checked against the student's data

    def loss_fn(self, label_smoothing: float = 0.0):
        t, alpha = self.temperature, self.alpha

        def kd_loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
            y, teacher = packed[:, 0].long(), packed[:, 1:]
            soft = F.kl_div(
                F.log_softmax(logits.float() / t, dim=1),
                F.log_softmax(teacher / t, dim=1),
                reduction="batchmean",
                log_target=True,
            ) * (t * t)
            hard = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            return alpha * soft + (1 - alpha) * hard

        return kd_loss

    def check_compatible(self, data) -> None:
        check_compatible(self.meta, data)

    @staticmethod
    def correct_fn(logits: torch.Tensor, packed: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (logits.argmax(1) == packed[:, 0].long()).sum(), packed.shape[0]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()

    def wrap(self, batches):
        """Training batches whose targets carry the teacher's logits; cached when nothing is random."""
        from tocha.engine.batches import ResidentBatches

        self.model.eval()
        cacheable = isinstance(batches, ResidentBatches) and batches.prepared and not batches.transform.augments
        if self.cache is True and not cacheable:
            raise UserError(
                "the teacher's logits cannot be cached: the training batches are augmented or read by a DataLoader",
                where="tocha distill --cache",
                fix="use --cache auto (or false)",
            )
        if self.cache in ("auto", True) and cacheable:
            logits = torch.cat([self.logits(batches.x[i : i + 1024]) for i in range(0, len(batches.x), 1024)])
            batches.y = torch.cat([batches.y.float()[:, None], logits], dim=1)
            log.info("distill    teacher logits cached for %d training samples (no augmentation)", len(logits))
            return batches
        return _TeacherBatches(batches, self)


class _TeacherBatches:
    """Any batches object, with the teacher run on each (augmented) batch as it is drawn."""

    def __init__(self, inner, teacher: Teacher) -> None:
        self.inner, self.teacher = inner, teacher

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.inner.set_epoch(epoch, first_batch)

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def wait_seconds(self) -> float:
        return getattr(self.inner, "wait_seconds", 0.0)

    def __iter__(self):
        for x, y in self.inner:
            yield x, torch.cat([y.float()[:, None], self.teacher.logits(x)], dim=1)


# ------------------------------------------------------------------------------- tocha distill


def load_teacher(run: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    from tocha.recipes.runs import load_run

    loaded = load_run(run, "best", "cpu")
    model = loaded.model
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), loaded.meta


def _same_normalisation(a, b) -> bool:
    """Equal within 2%: a different validation split (another seed) moves the mean/std in the 4th digit."""
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=0.02) for x, y in zip(a, b))


def check_compatible(teacher_meta: dict | None, data) -> None:
    """The teacher must have been trained on the same classes and input format as the student's data."""
    if teacher_meta is None:
        return
    problems = []
    if list(teacher_meta["classes"]) != list(data.classes):
        problems.append(f"classes {teacher_meta['classes'][:4]}... vs {list(data.classes)[:4]}...")
    for key, value in (("in_channels", data.in_channels), ("image_size", data.image_size)):
        if teacher_meta[key] != value:
            problems.append(f"{key} {teacher_meta[key]} vs {value}")
    if not (
        _same_normalisation(teacher_meta["mean"], data.mean) and _same_normalisation(teacher_meta["std"], data.std)
    ):
        problems.append("a different input normalisation")
    if problems:
        raise UserError(
            "the teacher was trained on other data than the student's: " + "; ".join(problems),
            where="tocha distill --teacher",
            fix="distil on the teacher's own dataset (the default), or train a teacher on this data",
        )


def resume_distill(student_run: str, *, argv: list[str]):
    """`tocha distill --resume STUDENT`: its config.yaml, and the teacher, T, alpha and cache its meta.json names."""
    from tocha import runfolder as rf
    from tocha.harness.run import resume_config

    cfg = resume_config(student_run, command="distill")
    source = rf.read_meta(Path(student_run))["distilled_from"]
    try:
        teacher, temperature, alpha = str(source["run"]), float(source["temperature"]), float(source["alpha"])
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"meta.json of {student_run} does not say which teacher, temperature and alpha it was distilled with",
            where="tocha distill --resume",
            fix=f"start it again with tocha distill --teacher RUN ... out={student_run} overwrite=true",
        ) from None
    return distill_run(
        teacher, [], temperature=temperature, alpha=alpha, cache=str(source.get("cache", "auto")), argv=argv, cfg=cfg
    )


def distill_run(
    teacher_run: str,
    overrides: list[str],
    *,
    temperature: float,
    alpha: float,
    cache: str,
    argv: list[str],
    cfg=None,
):
    """`tocha distill`: a student configured like `tocha train`, on the teacher's data unless told otherwise.
    `cfg` (a resumed student's own config) replaces the config built from the teacher's and `overrides`."""
    from tocha import config
    from tocha import runfolder as rf
    from tocha.hardware import _device
    from tocha.harness import train
    from tocha.tasks import create

    if temperature <= 0:
        raise UserError(
            f"--temperature must be positive, got {temperature:g}",
            where="tocha distill",
            allowed="> 0 (1 = the teacher's own probabilities; 2 to 8 is usual)",
        )
    if not 0 <= alpha <= 1:
        raise UserError(
            f"--alpha must be between 0 and 1, got {alpha:g}",
            where="tocha distill",
            allowed="0 (labels only) to 1 (teacher only)",
        )
    path = rf.check_run_dir(teacher_run)
    if rf.read_meta(path).get("task", "classify") != "classify":
        raise UserError(
            f"'{teacher_run}' is not an image classifier run; distillation teaches classifiers",
            where="tocha distill --teacher",
            fix="pass a run folder written by 'tocha train' for classification",
        )
    teacher_cfg = config.to_dict(config.load(path / rf.CONFIG))
    inherited = {
        "data": {k: teacher_cfg["data"][k] for k in ("name", "root", "val_fraction", "channels")},
        "image_size": teacher_cfg["image_size"],
        "seed": teacher_cfg["seed"],
    }
    cfg = cfg or config.load(None, overrides, values=inherited)
    if cfg.out:
        from tocha.folders import check_out_vs_source

        check_out_vs_source(Path(cfg.out), path, where="config key out of tocha distill", what="teacher run")
    model, meta = load_teacher(path, torch.device(_device(cfg.device, torch)[0]))
    log.info(
        "distill    teacher %s (%s, %s parameters), temperature %g, alpha %g",
        path,
        meta["model"]["name"],
        f"{sum(p.numel() for p in model.parameters()):,}",
        temperature,
        alpha,
    )
    teacher = Teacher(model, temperature, alpha, {"auto": "auto", "true": True, "false": False}[cache], meta)
    extra = {
        "distilled_from": {
            "run": str(path.resolve()),  # absolute: `tocha distill --resume` finds it from anywhere
            "model": meta["model"]["name"],
            "temperature": temperature,
            "alpha": alpha,
            "cache": cache,
        }
    }
    return train(cfg, task=create("classify", teacher=teacher, meta_extra=extra), argv=argv)
