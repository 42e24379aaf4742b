"""Reading a deployed artifact: an ONNX file written by `tocha export`, with the run's metadata in it.

Kept apart from the export code so that predicting from a file needs none of the writing side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tocha.errors import UserError

METADATA_KEY = "tocha"


def check_meta(meta, what: str, input_shape=None) -> dict:
    """A classifier's metadata (meta.json, or the copy inside an export) as predict needs it, or one
    clear error: a damaged file must not surface as KeyError/IndexError deep in predict."""
    problem = None
    if not isinstance(meta, dict):
        problem = "it is not a JSON object"
    elif not isinstance(meta.get("classes"), list) or not meta["classes"]:
        problem = "it has no class list"
    elif not isinstance(meta.get("model"), dict) or meta["model"].get("num_classes", len(meta["classes"])) != len(
        meta["classes"]
    ):
        problem = "its class list does not match the model's output size"
    elif not isinstance(meta.get("image_size"), int) or not isinstance(meta.get("in_channels"), int):
        problem = "its input size or channel count is missing"
    elif (
        input_shape is not None
        and len(input_shape) == 4
        and all(isinstance(d, int) for d in input_shape[2:])
        and tuple(input_shape[2:]) != (meta["image_size"], meta["image_size"])
    ):
        problem = f"it names image size {meta['image_size']} but the model takes {input_shape[2]}x{input_shape[3]}"
    if problem:
        raise UserError(
            f"{what} is damaged: {problem}", fix="re-export or retrain the run (tocha export RUN, tocha train)"
        )
    return meta


def onnx_predictor(path: str | Path, options=None) -> tuple[Callable[[torch.Tensor], np.ndarray], dict]:
    """(logits function, tocha metadata) of an ONNX file written by `tocha export`."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for a file that is not a model
        raise UserError(
            f"cannot load ONNX model '{path}': {str(exc).strip()[:200]}",
            fix="pass a file written by 'tocha export --format onnx'",
        ) from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise UserError(
            f"'{path}' has no tocha metadata (class names, normalisation)",
            fix="export it with 'tocha export RUN --format onnx'",
        )
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0] == 1
    half = session.get_inputs()[0].type == "tensor(float16)"  # an fp16 export: cast in, float32 out

    def call(x: torch.Tensor) -> np.ndarray:
        out = session.run(None, {name: (x.half() if half else x).numpy()})[0]
        return out.astype(np.float32) if half else out

    def run(x: torch.Tensor) -> np.ndarray:
        if fixed:
            return np.concatenate([call(x[i : i + 1]) for i in range(len(x))])
        return call(x)

    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    return run, check_meta(meta, f"the tocha metadata of {path}", session.get_inputs()[0].shape)
