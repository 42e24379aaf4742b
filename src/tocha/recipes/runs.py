"""Using a finished run: load its model, evaluate a split, predict image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tocha import runfolder as rf
from tocha.errors import UserError
from tocha.tasks.base import EvalResult, eval_result  # noqa: F401 - EvalResult is part of this API

PREDICT_BATCH = 256  # images decoded and run together by `tocha predict`


@dataclass(frozen=True)
class LoadedRun:
    run_dir: Path
    model: nn.Module
    meta: dict
    config_path: Path

    @property
    def inference_model(self) -> nn.Module:
        """The model as training scored it: wrapped in flip test-time augmentation when the run used tta=flip
        (eval, predict, bench-model and export use this one; pruning and distillation the bare model)."""
        from tocha.engine.tta import with_tta

        return with_tta(self.model, self.meta.get("tta", "none"))


@dataclass(frozen=True)
class Prediction:
    file: str
    top: tuple[tuple[str, float], ...]  # (class name, probability), most likely first


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    from tocha.deploy.artifact import check_meta
    from tocha.engine.checkpoint import load_weights
    from tocha.models import ModelSpec, build_model

    path = rf.check_run_dir(run_dir)
    meta = rf.read_meta(path)
    refuse_other_task(path, meta, "classify", "this command")
    check_meta(meta, f"meta.json of {path}")
    weights = path / (rf.BEST_WEIGHTS if checkpoint == "best" else rf.LAST_WEIGHTS)
    if not weights.is_file():
        raise UserError(
            f"run '{run_dir}' has no {checkpoint} checkpoint ({weights.name})",
            fix="the run may have stopped before its first evaluation; train it again",
        )
    model = build_model(ModelSpec.from_dict(meta["model"]))
    if meta.get("pruned"):  # channels were removed: shrink the freshly built layers to the stored tensors
        from tocha.deploy.prune import checkpoint_shapes, fit_to_shapes

        fit_to_shapes(model, checkpoint_shapes(weights))
    load_weights(model, weights)
    model.eval()
    return LoadedRun(path, model.to(torch.device(device)), meta, path / rf.CONFIG)


def refuse_other_task(path: Path, meta, wanted: str, command: str) -> None:
    """A run of another task (a language model, a regression) is named with the command that uses it."""
    from tocha.tasks import TASKS, task_of_meta

    task = task_of_meta(meta)
    if task != wanted:
        info = TASKS[task]
        hint = (
            f"use: tocha generate {path} --prompt TEXT"
            if info.infers == "generate"
            else f"use the {task} commands for it: tocha eval {path}, tocha predict {path} FILE"
        )
        raise UserError(f"'{path}' is a {info.noun} (task={task}), not a {TASKS[wanted].noun}", where=command, fix=hint)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise UserError(
            f"meta.json of {path} is damaged: it has no model description",
            fix="re-export or retrain the run (tocha train)",
        )


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 512,
    write: bool = True,
    top_k: int | None = None,
) -> EvalResult:
    from tocha import config
    from tocha.engine.batches import DeviceTransform, make_batches
    from tocha.engine.evaluate import evaluate_classifier
    from tocha.hardware import inference_precision, plan
    from tocha.tasks import create, task_of_meta

    path = rf.check_run_dir(run_dir)
    cfg = config.load(path / rf.CONFIG)
    meta = rf.read_meta(path)
    task = task_of_meta(meta)
    if task != "classify":
        runner = getattr(create(task), "evaluate_run", None)
        if runner is None:
            refuse_other_task(path, meta, "classify", "tocha eval")
        return runner(path, split=split, checkpoint=checkpoint, device=device, batch_size=batch_size, write=write)
    from tocha.deploy.artifact import check_meta

    check_meta(meta, f"meta.json of {path}")  # before the data is read with its sizes and classes
    chosen = load_split(path, split)
    hw = plan(device, "auto", "auto", "auto", file_data=chosen.inputs is None)
    precision = inference_precision(cfg.precision, cfg.device, hw.device)
    loaded = load_run(path, checkpoint, hw.device)
    dev = torch.device(hw.device)
    transform = DeviceTransform(meta["mean"], meta["std"], device=dev)
    batches = make_batches(
        chosen,
        batch_size,
        device=dev,
        transform=transform,
        train=False,
        workers=hw.workers,
        pin_memory=hw.pin_memory,
        seed=0,
    )
    loss, metrics = evaluate_classifier(
        loaded.inference_model,
        batches,
        classes=tuple(meta["classes"]),
        device=dev,
        precision=precision,
        top_k=top_k or cfg.top_k,
    )
    name = f"eval-{split}.json" if checkpoint == "best" else f"eval-{split}-{checkpoint}.json"
    record = {"split": split, "checkpoint": checkpoint, "loss": loss, **metrics.to_dict()}
    return eval_result(path / name, record, write, split=split, loss=loss, metrics=metrics, checkpoint=checkpoint)


def load_split(run_dir: Path, split: str, *, missing_ok: bool = False):
    """The `split` of the data a run was trained on, prepared as the run saw it (size, channels)."""
    from tocha import config
    from tocha.data import load_data

    cfg = config.load(run_dir / rf.CONFIG)
    meta = rf.read_meta(run_dir)
    data = load_data(
        cfg.data.name,
        root=cfg.data.root,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        image_size=meta["image_size"] or None,
        channels=str(meta["in_channels"]),
        download=False,
        on_bad_file=cfg.data.on_bad_file,
        path=cfg.data.path,
        target=cfg.data.target,
    )
    chosen = {"test": data.test, "val": data.val, "train": data.train}[split]
    if chosen is None:
        if missing_ok:
            return None
        raise UserError(
            f"dataset '{cfg.data.name}' has no {split} split",
            where="--split",
            fix="use --split val" if split == "test" else "use --split test",
        )
    if tuple(data.classes) != tuple(meta["classes"]):
        raise UserError(
            f"the data's classes {list(data.classes)[:5]}... differ from the run's {meta['classes'][:5]}...",
            where=f"data.root of {run_dir / rf.CONFIG}",
            fix="use the data the run was trained on",
        )
    return chosen


def load_image(file: str | Path, in_channels: int, image_size: int, resize: str = "pil") -> torch.Tensor:
    """An image file as uint8 [C, H, W] at the run's input size, prepared as its training data was:
    the same mode and bit-depth conversion as image folders, and the same resize (PIL bilinear for
    image folders, torch's antialiased bilinear for data held as tensors)."""
    from PIL import Image, UnidentifiedImageError

    from tocha.data.image_folder import decode_image
    from tocha.data.images import resize_uint8

    path = Path(file)
    if path.is_dir():
        raise UserError(f"'{file}' is a folder", where="tocha predict", fix="pass image files (or the folder's images)")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"image '{file}' {what}", where="tocha predict", fix="check the path")
    try:
        if resize == "pil":
            return decode_image(str(path), image_size, in_channels)
        return resize_uint8(decode_image(str(path), None, in_channels)[None], image_size)[0]
    except Image.DecompressionBombError:
        raise UserError(
            f"image '{file}' is too large to decode safely (a decompression bomb?)",
            where="tocha predict",
            fix="pass an image of a normal size",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot read image '{file}': {exc}", where="tocha predict", fix="pass PNG/JPEG/BMP image files"
        ) from None


def image_files(items: list[str]) -> list[str]:
    """The files to predict: files as given, folders as their images (sorted, hidden ones skipped)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMG_EXTENSIONS)
            )
            if not found:
                raise UserError(
                    f"'{item}' is a folder with no images in it",
                    where="tocha predict",
                    allowed=" ".join(IMG_EXTENSIONS),
                    fix="pass image files or a folder of them",
                )
            out += found
        else:
            out.append(item)
    return out


def predict_files(
    run_dir: str | Path, files: list[str], *, top_k: int = 3, device: str = "auto", checkpoint: str = "best"
) -> list[Prediction]:
    from tocha.engine.batches import DeviceTransform
    from tocha.hardware import plan

    if Path(run_dir).is_dir() and (Path(run_dir) / rf.META).is_file():
        from tocha.tasks import create, task_of_meta

        task = task_of_meta(rf.read_meta(Path(run_dir)))
        own = getattr(create(task), "predict_files", None) if task != "classify" else None
        if own is not None:  # e.g. a regression run predicts the rows of CSV files
            return [Prediction(name, values) for name, values in own(Path(run_dir), files, checkpoint=checkpoint)]
    if str(run_dir).endswith(".onnx"):  # a file from `tocha export`: it carries its own metadata
        from tocha.deploy.artifact import onnx_predictor

        if not Path(run_dir).is_file():
            raise UserError(f"ONNX file '{run_dir}' does not exist", fix="check the path")
        logits_of, meta = onnx_predictor(run_dir)
        dev = torch.device("cpu")
        older_resize = "pil"  # exports before meta said how: the file alone cannot tell
    else:
        from tocha import config
        from tocha.engine.step import AMP_DTYPES
        from tocha.hardware import inference_precision

        hw = plan(device, "auto", "auto", "auto", file_data=False)
        loaded = load_run(run_dir, checkpoint, hw.device)
        meta, dev = loaded.meta, torch.device(hw.device)
        trained = config.load(loaded.config_path)
        # Runs written before meta.json said so: image folders were resized by PIL, tensor data by torch.
        older_resize = "pil" if trained.data.name == "imagefolder" else "torch"
        amp_dtype = AMP_DTYPES[inference_precision(trained.precision, trained.device, hw.device)]

        model = loaded.inference_model

        def logits_of(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                return model(x).float()

    if not meta["image_size"]:
        raise UserError("this run was trained on feature vectors, not images", fix="use the Python API to predict")
    files = image_files(files)
    resize = meta.get("resize") or older_resize
    transform = DeviceTransform(meta["mean"], meta["std"], device=dev)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(files), PREDICT_BATCH):
            x = torch.stack(
                [
                    load_image(f, meta["in_channels"], meta["image_size"], resize)
                    for f in files[start : start + PREDICT_BATCH]
                ]
            )
            chunks.append(torch.as_tensor(logits_of(transform(x.to(dev), train=False))).float().softmax(1).cpu())
    probs = torch.cat(chunks)
    classes = meta["classes"]
    k = min(top_k, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [
        Prediction(str(f), tuple((classes[i], float(p)) for p, i in zip(v.tolist(), ix.tolist())))
        for f, v, ix in zip(files, values, indices)
    ]
