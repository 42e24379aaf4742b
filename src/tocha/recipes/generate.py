"""`tocha generate`: text from a character language model, from a run folder or its checkpoint file alone."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import torch

from tocha import runfolder as rf
from tocha.errors import UserError

log = logging.getLogger("tocha")


def read_lm_checkpoint(path: str | Path, checkpoint: str = "best") -> tuple[Path, dict]:
    """(weights file, meta) of a task=charlm run folder or of one of its .safetensors files."""
    path = Path(path)
    if path.is_dir():
        rf.check_run_dir(path)
        meta = rf.read_meta(path)
        if meta.get("task") != "charlm":
            raise UserError(
                f"'{path}' is not a language-model run (it was trained with task={meta.get('task', 'classify')})",
                where="tocha generate",
                fix="pass a run trained with 'tocha train task=charlm'; for images use tocha predict",
            )
        weights = path / (rf.BEST_WEIGHTS if checkpoint == "best" else rf.LAST_WEIGHTS)
        if not weights.is_file():
            raise UserError(
                f"run '{path}' has no {checkpoint} checkpoint ({weights.name})",
                fix="the run may have stopped before its first evaluation; train it again",
            )
        return weights, meta
    if not path.is_file():
        raise UserError(
            f"'{path}' does not exist",
            where="tocha generate",
            fix="pass a run folder or a .safetensors file written by 'tocha train task=charlm'",
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for other files
        raise UserError(
            f"cannot read '{path}' as a safetensors checkpoint: {exc}",
            where="tocha generate",
            fix="pass a run folder or its checkpoints/best.safetensors",
        ) from None
    if metadata.get("tocha.task") != "charlm" or "tocha.meta" not in metadata:
        raise UserError(
            f"'{path}' carries no character-model metadata",
            where="tocha generate",
            fix="pass a checkpoint written by 'tocha train task=charlm' (or its run folder)",
        )
    return path, json.loads(metadata["tocha.meta"])


def load_lm(path: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(model in eval mode on `device`, meta) of a character language model."""
    from tocha.engine.checkpoint import load_weights
    from tocha.models.text import TextModelSpec, build_text_model

    weights, meta = read_lm_checkpoint(path, checkpoint)
    model = build_text_model(TextModelSpec.from_dict(meta["model"]))
    load_weights(model, weights)
    return model.eval().to(torch.device(device)), meta


def prompt_chars(prompt: str, chars: tuple[str, ...], *, skip_unknown: bool) -> str:
    """The prompt, checked against the vocabulary: unknown characters stop (or are dropped, with a note)."""
    known = set(chars[1:])
    unknown = list(dict.fromkeys(c for c in prompt if c not in known))
    if unknown and not skip_unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise UserError(
            f"the prompt has {len(unknown)} character(s) the model never saw in training: {shown}",
            where="tocha generate --prompt",
            fix="remove them, or pass --skip-unknown to drop them from the prompt",
        )
    if unknown:
        log.warning("dropped %d unknown prompt character(s): %s", len(unknown), ", ".join(map(repr, unknown[:10])))
    return "".join(c for c in prompt if c in known)


def generate(
    run: str | Path,
    prompt: str,
    length: int,
    *,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    skip_unknown: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """`length` characters after `prompt`; each one goes to `on_text` as soon as it is drawn."""
    from tocha.engine.step import AMP_DTYPES
    from tocha.hardware import inference_precision, plan
    from tocha.tasks.charlm import generate_text

    hw = plan(device, "auto", 0, "auto", file_data=False)
    model, meta = load_lm(run, checkpoint, hw.device)
    chars = tuple(meta["vocab"])
    text = prompt_chars(prompt, chars, skip_unknown=skip_unknown)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
        log.info("seed %d (pass --seed %d to get this text again)", seed, seed)
    # The run's precision when on the kind of device it trained on; fp32 elsewhere.
    precision = inference_precision(meta.get("precision", "fp32"), meta.get("device"), hw.device)
    amp_dtype = AMP_DTYPES.get(precision)
    if on_text is not None:
        on_text(text)
    with torch.autocast(torch.device(hw.device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return generate_text(
            model, chars, text, length, seed=seed, temperature=temperature, top_k=top_k, on_text=on_text
        )
