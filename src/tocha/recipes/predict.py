"""`tocha.predict`: class probabilities from Python, with the run's own preprocessing.

The model comes from a run folder, a `FitResult`, a `LoadedRun`, or a module that `tocha.fit`
trained (it carries `tocha_meta`). Inputs are image files (prepared as `tocha predict` prepares
them: the run's mode, size and resize), a tensor (uint8 images are resized as training resized
tensor data; float inputs are taken as already at the training scale, [0, 1] for images), or a
Dataset whose items are `x` or `(x, y)`. The normalisation is always the run's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tocha.engine.tta import with_tta
from tocha.errors import UserError

PREDICT_BATCH = 256


@dataclass(frozen=True)
class Predictions:
    probabilities: torch.Tensor  # [N, K] softmax over the classes, on the CPU
    indices: torch.Tensor  # [N] the most likely class index
    classes: tuple[str, ...]
    names: tuple[str, ...] | None = None  # the files, when files were given

    @property
    def labels(self) -> list[str]:
        """The most likely class name of each input."""
        return [self.classes[i] for i in self.indices.tolist()]

    def top(self, k: int = 3) -> list[list[tuple[str, float]]]:
        values, indices = self.probabilities.topk(min(k, len(self.classes)), dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(v.tolist(), ix.tolist())] for v, ix in zip(values, indices)
        ]

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        shown = ", ".join(self.labels[:5]) + (", ..." if len(self) > 5 else "")
        return f"Predictions({len(self)} inputs, {len(self.classes)} classes: [{shown}])"


def model_and_meta(source: Any, device: str, checkpoint: str) -> tuple[nn.Module, dict]:
    if isinstance(source, (str, Path)):
        from tocha.recipes.runs import load_run

        loaded = load_run(source, checkpoint, device)
        return loaded.inference_model, loaded.meta
    if hasattr(source, "model") and isinstance(getattr(source, "meta", None), dict):  # FitResult, LoadedRun
        return with_tta(source.model, source.meta.get("tta", "none")), source.meta
    if isinstance(source, nn.Module):
        meta = getattr(source, "tocha_meta", None)
        if meta is None:
            raise UserError(
                "this module has no tocha metadata (normalisation, classes)",
                where="tocha.predict",
                fix="pass the FitResult or run folder, or a module returned by tocha.fit",
            )
        return with_tta(source, meta.get("tta", "none")), meta
    raise UserError(
        f"cannot predict with a {type(source).__name__}",
        where="tocha.predict",
        allowed="a run folder, a FitResult, a LoadedRun, or a module trained by tocha.fit",
    )


def _as_batches(inputs: Any, meta: dict):
    """(names or None, an iterator of raw input batches on the CPU)."""
    from tocha.data.images import resize_uint8
    from tocha.recipes.runs import image_files, load_image

    if isinstance(inputs, (str, Path)) or (
        isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, (str, Path)) for i in inputs)
    ):
        if not meta.get("image_size"):
            raise UserError("this run was trained on feature vectors, not images", where="tocha.predict")
        files = image_files([str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])
        resize = meta.get("resize", "torch")

        def from_files():
            for start in range(0, len(files), PREDICT_BATCH):
                chunk = files[start : start + PREDICT_BATCH]
                yield torch.stack([load_image(f, meta["in_channels"], meta["image_size"], resize) for f in chunk])

        return tuple(files), from_files()
    if isinstance(inputs, torch.Tensor):
        x = inputs
        if meta.get("image_size") and x.ndim == 3 and x.shape[0] == meta["in_channels"]:
            x = x[None]  # one image
        if x.dtype == torch.uint8 and x.ndim == 4 and meta.get("image_size"):
            x = resize_uint8(x.cpu(), meta["image_size"])  # as training resized tensor data
        return None, (x[i : i + PREDICT_BATCH] for i in range(0, len(x), PREDICT_BATCH))
    if isinstance(inputs, torch.utils.data.Dataset):

        def from_dataset():
            items = []
            for i in range(len(inputs)):
                item = inputs[i]
                items.append(item[0] if isinstance(item, (tuple, list)) else item)
                if len(items) == PREDICT_BATCH:
                    yield torch.stack(items)
                    items = []
            if items:
                yield torch.stack(items)

        return None, from_dataset()
    raise UserError(
        f"cannot predict inputs of type {type(inputs).__name__}",
        where="tocha.predict",
        allowed="image paths (a file, a folder, or a list), a tensor, or a torch.utils.data.Dataset",
    )


def predict(source: Any, inputs: Any, *, device: str | None = None, checkpoint: str = "best") -> Predictions:
    """Probabilities and labels of `inputs` with `source`'s model and its own preprocessing.

    `device`: None keeps a handed-in model where it is (a run folder loads on "auto")."""
    from tocha.engine.batches import DeviceTransform
    from tocha.hardware import plan

    chosen = plan(device or "auto", "auto", "auto", "auto", file_data=False).device
    model, meta = model_and_meta(source, chosen, checkpoint)
    if meta.get("task", "classify") != "classify":
        raise UserError(
            f"tocha.predict takes classifiers; this is task={meta.get('task')}",
            where="tocha.predict",
            fix="use tocha predict RUN FILE for regression runs, tocha generate for language models",
        )
    param = next(model.parameters(), None)
    dev = torch.device(device) if device else (param.device if param is not None else torch.device(chosen))
    model = model.to(dev)
    transform = DeviceTransform(meta.get("mean"), meta.get("std"), device=dev)
    names, batches = _as_batches(inputs, meta)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for x in batches:
                chunks.append(model(transform(x.to(dev), train=False)).float().softmax(1).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise UserError("there is nothing to predict (no inputs)", where="tocha.predict")
    probs = torch.cat(chunks)
    return Predictions(probs, probs.argmax(1), tuple(meta["classes"]), names)
