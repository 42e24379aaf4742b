"""Classification: images (or feature rows) into classes. Options: a teacher to distil from, a
handed-in model with its spec (the fine-tune after pruning)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from tocha.config import AUTO, PRESETS
from tocha.data import DEFAULT_AUGMENT, load_data
from tocha.data.resident import decide, materialise
from tocha.data.types import DataSplits
from tocha.engine.batches import DeviceTransform, make_batches
from tocha.engine.evaluate import evaluate_classifier
from tocha.engine.step import top1_correct
from tocha.engine.tta import with_tta
from tocha.errors import UserError
from tocha.harness import scale
from tocha.models import DEFAULT_DROPOUT, ModelSpec, build_model, check_input_size
from tocha.models.transfer import Freezing, load_pretrained
from tocha.models.whiten import PATCH_SAMPLES, first_conv, whiten_first_conv
from tocha.tasks.base import Built, Finished, final_scores

log = logging.getLogger("tocha")


class Task:
    name = "classify"

    def __init__(self, *, teacher=None, spec: ModelSpec | None = None, meta_extra: dict | None = None) -> None:
        self.teacher = teacher  # tocha.distill.Teacher: the loss learns from its logits too
        self.spec = spec  # what a handed-in model is built from (a pruned model reloads)
        self.meta_extra = meta_extra or {}
        self.data: DataSplits | None = None
        self.top_k = 5
        self.tta = "none"

    # ---------------------------------------------------------------- build
    def load(self, cfg, data: DataSplits | None) -> tuple[DataSplits, bool]:
        if data is not None:
            return data, False
        return load_data(
            cfg.data.name,
            root=cfg.data.root,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.seed,
            image_size=None if cfg.image_size == AUTO else cfg.image_size,
            channels=cfg.data.channels,
            download=cfg.data.download,
            on_bad_file=cfg.data.on_bad_file,
            path=cfg.data.path,
            target=cfg.data.target,
        ), True

    def build(self, cfg, placement, *, data: DataSplits | None = None, model: nn.Module | None = None) -> Built:
        data, registered = self.load(cfg, data)
        device = placement.device
        residency = decide(data, cfg.data.resident, device)
        if residency.resident:
            if data.train.inputs is None:
                data = materialise(data, workers=placement.hw.workers)
            placement = placement.in_memory("data is held in memory: batches are tensor slices, no loader processes")
        elif data.train.loader is not None:
            n = data.train.loader.num_workers
            placement = placement.loader_workers(n, f"the DataLoader given as train_data has num_workers={n}")
        self.data = data
        model, spec, weight_notes = self.model(cfg, data, model)
        # channels_last suits the convolution kernels (oneDNN on CPU: 1.7x for the default CNN here; cuDNN on GPU).
        channels_last = data.image_size > 0 and any(isinstance(m, nn.Conv2d) for m in model.modules())
        model, sync_note = scale.sync_batchnorm(model, cfg.dist.sync_batchnorm, placement.dist, device)
        model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        freezing = Freezing(model, cfg.model.freeze, cfg.unfreeze_at_epoch, pretrained=bool(cfg.model.weights))
        augment = cfg.data.augment
        if augment == AUTO:  # augmentation helps models that can overfit; it only slows a small MLP down
            augment = list(DEFAULT_AUGMENT.get(cfg.data.name, ())) if registered and spec.name != "mlp" else []
        transform = DeviceTransform(
            data.mean,
            data.std,
            augment=augment,
            crop_padding=cfg.data.crop_padding,
            device=device,
            seed=cfg.seed,
            channels_last=channels_last,
        )
        dist = placement.dist
        batches = {
            name: make_batches(
                split,
                placement.batch_size_per_process,
                device=device,
                transform=transform,
                train=name == "train",
                workers=placement.hw.workers,
                pin_memory=placement.hw.pin_memory,
                seed=cfg.seed,
                rank=dist.rank,
                world_size=dist.world_size,
                resident=residency.resident,
                prepare_once=residency.prepare_once,
            )
            for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
            if split is not None
        }
        x = data.train.head(placement.batch_size_per_process)
        probe = transform.prepare(x.to(device)), data.train.labels[: len(x)].to(device)
        init_notes = [_whiten(cfg, model, spec, data, transform, device)] if cfg.model.whiten else []
        loss_fn, correct_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), top1_correct
        if self.teacher is not None:  # distillation: the targets carry the teacher's logits; the loop is the same
            self.teacher.check_compatible(data)
            self.teacher.model.to(device)  # on the student's device, wherever it was loaded
            batches["train"] = self.teacher.wrap(batches["train"])
            loss_fn, correct_fn = self.teacher.loss_fn(cfg.label_smoothing), self.teacher.correct_fn
        if freezing.active:  # transfer learning: frozen parameters are set as each epoch starts
            batches["train"] = freezing.wrap(batches["train"])
        self.top_k, self.tta = cfg.top_k, cfg.tta
        lr_backbone = freezing.backbone_lr(cfg.lr, cfg.lr_backbone)  # the harness resolved cfg.lr
        data_name = cfg.data.name if registered else "in-memory data"  # tensors, a Dataset: not the default name
        lines = self.describe(
            data_name, data, residency.reason, spec, model, sync_note, [*weight_notes, *init_notes], freezing
        )
        meta = {
            "task": "classify",
            "model": spec.to_dict(),
            "classes": list(data.classes),
            "mean": data.mean,
            "std": data.std,
            "in_channels": data.in_channels,
            "image_size": data.image_size,
            # predict resizes a file as training did: PIL for image folders, torch for tensor data
            "resize": "pil" if registered and cfg.data.name == "imagefolder" else "torch",
            "tta": cfg.tta,  # what the val/test scores used; eval, predict, bench-model and exported graphs too
            **self.meta_extra,
        }
        resolved = {
            "model.dropout": spec.dropout,
            "data.augment": augment,
            "lr_backbone": lr_backbone,
            "image_size": data.image_size if data.image_size else AUTO,
        }
        if data.image_size:
            resolved["data.channels"] = str(data.in_channels)
        if lr_backbone != cfg.lr and freezing.head:
            lines.append(
                f"lr         {cfg.lr:g} for the head '{freezing.head}', {lr_backbone:g} for the rest (lr_backbone)"
            )
        return Built(
            model,
            batches,
            meta,
            loss_fn,
            correct_fn,
            probe,
            lines,
            resolved,
            generators={"augment": transform.generator},
            placement=placement,
            lr_of=freezing.lr_of(cfg.lr, lr_backbone),
            run_name=(cfg.data.name if registered else "data", spec.name),
            probe_loss=nn.functional.cross_entropy,
        )

    def model(self, cfg, data: DataSplits, model: nn.Module | None) -> tuple[nn.Module, ModelSpec, list[str]]:
        dropout = DEFAULT_DROPOUT.get(cfg.model.name, 0.0) if cfg.model.dropout == AUTO else cfg.model.dropout
        spec = self.spec or ModelSpec(
            cfg.model.name if model is None else type(model).__name__,
            data.in_channels,
            len(data.classes),
            data.image_size,
            tuple(cfg.model.hidden),
            cfg.model.width,
            dropout,
            cfg.model.bn_momentum,
        )
        if model is not None:
            check_input_size(model, spec)  # a model handed to tocha.fit: check it against the data too
            return model, spec, []
        model = build_model(spec)
        notes = load_pretrained(model, cfg.model.weights, classes=tuple(data.classes)) if cfg.model.weights else []
        return model, spec, notes

    @staticmethod
    def describe(data_name, data, residency_reason, spec, model, sync_note, weight_notes, freezing) -> list[str]:
        lines = [
            f"data       {data_name}: {len(data.train)} train / {len(data.val) if data.val else 0} val / "
            f"{len(data.test) if data.test else 'no'} test samples, {len(data.classes)} classes, from "
            f"{data.source}"
        ]
        lines += [f"note       {note}" for note in data.notes]
        lines.append(f"batches    {residency_reason}")
        if sync_note:
            lines.append(f"model      {sync_note}")
        lines.append(f"model      {spec.name}: {sum(p.numel() for p in model.parameters()):,} parameters")
        lines += [f"weights    {note}" for note in weight_notes]
        if freezing.active:
            lines.append(f"freeze     {freezing.describe()}")
        return lines

    def wrap_loss(self, loss):
        """tocha.fit(loss=...): `loss(logits, y)` as given (a mean over the batch)."""
        if self.teacher is not None:
            raise UserError("a custom loss cannot be combined with distillation", where="tocha.fit loss")
        return loss

    # ---------------------------------------------------------------- score
    def scored(self, built: Built, split: str):
        dist = built.placement.dist
        n = len(getattr(self.data, split))
        return evaluate_classifier(
            with_tta(built.model, self.tta),
            built.batches[split],
            classes=self.data.classes,
            device=built.placement.device,
            precision=built.placement.precision,
            top_k=self.top_k,
            dist=dist,
            n_samples=n,
        )

    def evaluate(self, built: Built, split: str) -> dict:
        loss, metrics = self.scored(built, split)
        return {f"{split}.loss": loss, **metrics.flat(split)}

    def finish(self, built: Built, cfg, summary: dict) -> Finished:
        fields, values = final_scores(self.scored, built)
        done = Finished(summary=fields, values=values)
        if done.values["test"] is not None:
            done.jsons["eval-test.json"] = {
                "split": "test",
                "checkpoint": "best",
                "loss": done.summary["test"]["test.loss"],
                **done.values["test"].to_dict(),
            }
        done.report = {"test_metrics": done.values["test"], "val_metrics": done.values["val"]}
        if summary.get("best"):
            b = summary["best"]
            done.headline.append(f"best {b['metric']} = {b['value']:.4f} at epoch {b['epoch']:g}")
        if (test := done.values["test"]) is not None:
            done.headline.append(
                f"test accuracy {test.accuracy:.4f}  (macro F1 {test.macro.f1:.4f}, {test.n_samples} samples)"
            )
        done.headline.append(f"{summary['train_samples_per_second']:,.0f} samples/s")
        return done


def _whiten(cfg, model: nn.Module, spec: ModelSpec, data: DataSplits, transform, device) -> str:
    """model.whiten: the first conv set from the un-augmented training images, as the model will see them."""
    if not data.image_size or not isinstance(first_conv(model), nn.Conv2d):
        raise UserError(
            f"model.whiten=true needs images and a model with a convolution; model={spec.name} has none"
            if data.image_size
            else "model.whiten=true needs image data; this data is feature vectors",
            where="config key model.whiten",
            fix=(
                f"pass model.whiten=false (preset={cfg.preset} sets it)"
                if PRESETS.get(cfg.preset, {}).get("model.whiten")
                else "pass model.whiten=false"
            )
            + ", or use an image model such as model=cnn",
        )
    try:
        images = transform.prepare(data.train.head(PATCH_SAMPLES).to(device))
        return whiten_first_conv(model, images)
    except ValueError as exc:
        raise UserError(str(exc), where="config key model.whiten", fix="drop model.whiten") from None
