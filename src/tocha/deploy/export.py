"""`tocha export`: a run's best model as a deployable file, checked against the PyTorch model.

Every export carries the run's metadata (class names, normalisation, input shape), so the file
alone is enough to predict. Every export is checked on real test samples: the artifact and the
PyTorch model run the same inputs, and the max abs difference of the logits and the top-1
agreement are printed and stored beside the file (`<file>.parity.json`). An export that fails
the check is not left in place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tocha.deploy.artifact import METADATA_KEY, onnx_predictor
from tocha.errors import UserError

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts", "safetensors": ".safetensors"}
FP32_TOLERANCE = 1e-4  # max abs logit difference an fp32 export may show
# Half precision: 10-bit (fp16) or 7-bit (bf16) mantissas move logits by ~1e-2; near-ties may flip.
HALF = {"fp16": (torch.float16, 0.1, 0.99), "bf16": (torch.bfloat16, 0.5, 0.98)}  # dtype, tolerance, agreement
PRECISIONS = ("fp32", *HALF)


@dataclass(frozen=True)
class Parity:
    samples: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    min_agreement: float = 1.0

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement >= self.min_agreement


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    bytes: int
    parity: Parity


def check_parity(
    reference: Callable[[torch.Tensor], torch.Tensor],
    artifact: Callable[[torch.Tensor], np.ndarray],
    x: torch.Tensor,
    *,
    tolerance: float = FP32_TOLERANCE,
    min_agreement: float = 1.0,
    batch: int = 256,
) -> Parity:
    """Run `x` through both and compare logits (max abs difference) and predicted classes."""
    worst, agree = 0.0, 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        with torch.no_grad():
            want = reference(xb).float().numpy()
        got = np.asarray(artifact(xb), dtype=np.float32)
        if got.shape != want.shape:
            return Parity(len(x), float("inf"), 0.0, tolerance, min_agreement)
        worst = max(worst, float(np.abs(got - want).max()))
        agree += int((got.argmax(1) == want.argmax(1)).sum())
    return Parity(len(x), worst, agree / len(x), tolerance, min_agreement)


def metadata(meta: dict, run_dir: Path, macs: int | None = None, precision: str = "fp32") -> dict:
    return {
        "macs": macs,
        "precision": precision,
        "classes": meta["classes"],
        "mean": meta["mean"],
        "std": meta["std"],
        "in_channels": meta["in_channels"],
        "image_size": meta["image_size"],
        "model": meta["model"],
        "tta": meta.get("tta", "none"),  # in the graph; a safetensors file holds the bare model
        "run": str(run_dir),
        "input": "float32 [batch, C, H, W], scaled to [0, 1] then (x - mean) / std per channel",
    }


def sample_inputs(run_dir: Path, meta: dict, n: int) -> torch.Tensor:
    """Up to `n` normalised test images of the run's own data (validation when there is no test split)."""
    from tocha.engine.batches import DeviceTransform
    from tocha.recipes.runs import load_split

    split = load_split(run_dir, "test", missing_ok=True) or load_split(run_dir, "val")
    return DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(split.head(n))


def _onnx(model: nn.Module, x: torch.Tensor, path: Path, info: dict, opset: int, dynamic_batch: bool):
    import onnx

    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    example = x[:2] if dynamic_batch else x[:1]
    # The exporter narrates its passes, and prints a failed opset conversion as a traceback.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            external_data=False,
        )
    proto = onnx.load(str(path))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter writes 18 or later and cannot always convert a model down
        raise UserError(
            f"the ONNX exporter wrote opset {written}, not the --opset {opset} asked for (it cannot convert "
            "this model to that opset); nothing was written",
            where="tocha export --opset",
            fix="use --opset 18 (the default) or higher",
        )
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.save(proto, str(path))
    return onnx_predictor(path)[0]


def probe_onnx(model: nn.Module, meta: dict, run_dir: Path, path: Path, macs: int | None = None) -> Path:
    """An fp32 ONNX of a model object (e.g. pruned, not yet fine-tuned) with the run's metadata, for timing
    and size only: no parity check, no overwrite rules (the caller owns `path`)."""
    x = sample_inputs(run_dir, meta, 2)
    _onnx(model.eval(), x, path, metadata(meta, run_dir, macs), 18, True)
    return path


def _pt2(model: nn.Module, x: torch.Tensor, path: Path, info: dict, dynamic_batch: bool):
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    program = torch.export.export(model, (x[:2] if dynamic_batch else x[:1],), dynamic_shapes=shapes)
    torch.export.save(program, str(path), extra_files={f"{METADATA_KEY}.json": json.dumps(info)})
    loaded = torch.export.load(str(path)).module()
    if dynamic_batch:
        return lambda xb: loaded(xb).detach().numpy()
    return lambda xb: np.concatenate([loaded(xb[i : i + 1]).detach().numpy() for i in range(len(xb))])


def _torchscript(model: nn.Module, x: torch.Tensor, path: Path, info: dict):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance mode; it still serves older runtimes
        traced = torch.jit.trace(model, x[:2])
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(info)})
        loaded = torch.jit.load(str(path))
    return lambda xb: loaded(xb).detach().numpy()


def _safetensors(model: nn.Module, path: Path, info: dict, run_dir: Path):
    from safetensors.torch import save_model

    from tocha.recipes.runs import load_run

    save_model(model, str(path), metadata={METADATA_KEY: json.dumps(info)})
    reloaded = load_run(run_dir).model  # same architecture, then the exported tensors
    from tocha.engine.checkpoint import load_weights

    load_weights(reloaded, path)
    return lambda xb: reloaded(xb).detach().numpy()


class _CastInput(nn.Module):
    """Runs a half-precision model on float32 inputs and returns float32 logits (what every export takes)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def check_options(fmt: str, precision: str) -> None:
    """The format and precision, and the combinations that cannot work."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", where="tocha export --format", allowed=", ".join(FORMATS))
    if precision not in PRECISIONS:
        raise UserError(
            f"unknown precision '{precision}'", where="tocha export --precision", allowed=", ".join(PRECISIONS)
        )
    if precision == "bf16" and fmt == "onnx":
        raise UserError(
            "bf16 ONNX files do not run on ONNX Runtime's CPU or CUDA providers for most operators",
            where="tocha export --precision",
            fix="use --precision fp16 for ONNX, or bf16 with --format pt2",
        )
    if precision != "fp32" and fmt == "safetensors":
        raise UserError(
            "safetensors export keeps the trained fp32 weights",
            where="tocha export --precision",
            fix="drop --precision, or use --format onnx/pt2/torchscript",
        )


def check_target(target: Path, path: Path, fmt: str, *, given: bool, overwrite: bool) -> Path:
    """Refuse an output that would replace a run file or a file tocha did not write; returns the parity sidecar."""
    from tocha import folders

    # Inside the run only its own export/ and compressed/ folders: anywhere else an export could replace run files.
    folders.check_out_vs_source(
        target, path, where="tocha export --out", what="run being exported", allowed_inside=("export", "compressed")
    )
    if target.is_dir():
        raise UserError(
            f"'{target}' is a folder",
            where="tocha export --out",
            fix=f"name the file to write, e.g. --out {target / ('model' + FORMATS[fmt])}",
        )
    if target.exists():
        ours = folders.is_tocha_export(target)
        if not ours:  # --overwrite replaces an earlier export only, never a file tocha did not write
            raise UserError(
                f"'{target}' already exists and was not written by tocha export (it has no tocha "
                "metadata); it is not replaced, with or without --overwrite",
                where="tocha export --out",
                fix="choose another --out",
            )
        if not overwrite:
            raise UserError(
                f"'{target}' already exists",
                where="tocha export --out",
                fix="choose another --out, or pass --overwrite to replace it",
            )
    sidecar = target.with_name(target.name + ".parity.json")
    if sidecar.exists() and not _is_parity_file(sidecar):
        raise UserError(
            f"'{sidecar}' (where the parity check is written) exists and was not written by tocha",
            where="tocha export --out",
            fix="choose another --out",
        )
    if not target.parent.is_dir() and given:
        raise UserError(
            f"folder '{target.parent}' does not exist",
            where="tocha export --out",
            fix="create it first or choose another --out",
        )
    return sidecar


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    *,
    out: str | Path | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    overwrite: bool = False,
    samples: int = 512,
    precision: str = "fp32",
) -> ExportResult:
    from tocha import runfolder as rf
    from tocha.recipes.runs import load_run

    check_options(fmt, precision)
    path = rf.check_run_dir(run_dir)
    from tocha import folders

    target = Path(out) if out else path / "export" / f"model{FORMATS[fmt]}"
    sidecar = check_target(target, path, fmt, given=bool(out), overwrite=overwrite)
    loaded = load_run(path, "best", "cpu")
    meta = loaded.meta
    # A graph holds what training scored (tta=flip: both views averaged); a safetensors file only weights.
    model = (loaded.model if fmt == "safetensors" else loaded.inference_model).eval()
    if not meta["image_size"]:
        raise UserError(
            "export supports image models only for now; this run was trained on feature vectors",
            where="tocha export",
            fix="use torch.onnx.export on the model from tocha.load_run",
        )
    x = sample_inputs(path, meta, samples)
    made = not target.parent.is_dir()
    if made:  # RUN/export/, made only once the run is known to be exportable
        target.parent.mkdir(parents=True)
        folders.mark(target.parent, "export")
    from tocha.deploy.prune import count_macs

    info = metadata(meta, path, count_macs(model, x[:1]), precision)
    reference = model
    if precision != "fp32":  # the file holds half weights; the parity check compares it with the fp32 model
        import copy

        dtype = HALF[precision][0]
        model = copy.deepcopy(model).to(dtype) if fmt == "onnx" else _CastInput(copy.deepcopy(model), dtype)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")  # keeps the extension
    _remove_dead_temporaries(target)
    try:
        try:
            if fmt == "onnx":
                artifact = _onnx(model, x.to(next(model.parameters()).dtype), tmp, info, opset, dynamic_batch)
            elif fmt == "pt2":
                artifact = _pt2(model, x, tmp, info, dynamic_batch)
            elif fmt == "torchscript":
                artifact = _torchscript(model, x, tmp, info)
            else:
                artifact = _safetensors(model, tmp, info, path)
        except UserError:
            raise
        except Exception as exc:  # exporters raise many types for unsupported operators
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(
                f"{fmt} export of '{meta['model']['name']}' failed: {type(exc).__name__}: {first}",
                where="tocha export",
                fix="try another --format (pt2, torchscript, safetensors), or --opset; --debug shows the traceback",
            ) from None
        tolerance, agreement = HALF[precision][1:] if precision != "fp32" else (FP32_TOLERANCE, 1.0)
        parity = check_parity(reference, artifact, x, tolerance=tolerance, min_agreement=agreement)
        if not parity.ok:
            raise UserError(
                f"the {fmt} export does not match the PyTorch model on {parity.samples} test samples: "
                f"max abs logit difference {parity.max_abs_diff:.3g} (allowed {parity.tolerance:g}), "
                f"top-1 agreement {parity.top1_agreement:.2%} (required {parity.min_agreement:.0%}); "
                "nothing was written",
                where="tocha export parity check",
                fix="try another --format or --opset",
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        if made and not target.exists():  # a failed export leaves no empty RUN/export/ behind
            (target.parent / folders.MARKER).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target.parent.rmdir()
    rf.write_json(sidecar, {"format": fmt, **asdict(parity)})
    return ExportResult(target, fmt, target.stat().st_size, parity)


def _remove_dead_temporaries(target: Path) -> None:
    """Temporary files of earlier exports to `target` whose process is gone (killed): they are junk.
    One of a running export (its PID alive) stays; that process removes it itself."""
    prefix = f".{target.stem}.tmp-"
    for stale in target.parent.glob(f"{prefix}*{target.suffix}"):
        pid = stale.name[len(prefix) : len(stale.name) - len(target.suffix)]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_parity_file(path: Path) -> bool:
    try:
        return {"format", "max_abs_diff", "top1_agreement"} <= set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return False
