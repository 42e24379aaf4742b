"""Static int8 with per-layer fallback: quantize every layer, revert to fp32 the ones that cost most.

A fixed rule ("the first and last layer stay fp32") is right for some models and wasteful for
others. Here, as in NNCF's accuracy-aware quantization:

1. every weight layer (Conv, Gemm, MatMul) is quantized; if the validation accuracy is within
   the budget, that is the result;
2. otherwise each layer is ranked by its *sensitivity*: how much the error of the int8 model's
   logits against the fp32 model's (mean squared difference, on a calibration subset) drops when
   that layer alone stays fp32. The logit error needs no labels and sees a damaged layer before
   accuracy does (a few hundred samples rarely change their top-1, their logits always move);
3. layers are reverted to fp32 in that order, cumulatively, each time re-judged on validation
   accuracy (the caller's `evaluate`), until the drop is within budget or every layer is fp32.

The activation ranges are computed once (deploy/calibrate.py) and reused by every quantization;
each try is a quantize_static call with another `nodes_to_exclude`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
RANK_SAMPLES = 512


@dataclass
class FallbackResult:
    path: Path
    reference_accuracy: float  # the fp32 model's, by `evaluate`
    accuracies: list[float]  # every layer int8, then after each revert
    reverted: list[str] = field(default_factory=list)  # layers kept fp32, in the order they were reverted
    sensitivity: dict[str, float] = field(default_factory=dict)  # per layer: logit error removed by reverting it
    within_budget: bool = False

    @property
    def accuracy(self) -> float:
        return self.accuracies[-1]


class Calibrated:
    """An fp32 ONNX file pre-processed for quantization, with its activation ranges: quantized many times."""

    def __init__(self, fp32: Path, calibration: np.ndarray, method: str, workdir: Path) -> None:
        from tocha.deploy import calibrate

        self.fp32, self.workdir = Path(fp32), Path(workdir)
        self.source = prepare(self.fp32, self.workdir / "prepared.onnx")
        batches = [calibration[i : i + 64] for i in range(0, len(calibration), 64)]
        self.cache = self.workdir / "calibration.json"
        calibrate.write_cache(calibrate.ranges(calibrate.collect(self.source, batches), method), self.cache)

    def layers(self) -> list[str]:
        import onnx

        graph = onnx.load(str(self.source), load_external_data=False).graph
        return [n.name for n in graph.node if n.op_type in WEIGHT_OPS]

    def quantize(self, out: Path, exclude: list[str]) -> Path:
        """Static int8 (QDQ, per-channel int8 weights, uint8 activations) of every layer but `exclude`."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        # The ranges are tocha's: ONNX Runtime reads them from the cache and calibrates nothing itself.
        quantize_static(
            str(self.source),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
            calibration_cache_path=str(self.cache),
        )
        copy_metadata(self.fp32, out)
        return out


def prepare(fp32: Path, prepared: Path) -> Path:
    """ONNX Runtime's pre-processing for quantization (shape inference, graph optimisation) into `prepared`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the plain export when it fails
        shutil.copyfile(fp32, prepared)
    return prepared


def copy_metadata(source: Path, target: Path) -> None:
    """Quantization drops a model's metadata: put tocha's (class names, normalisation) back."""
    import onnx

    from tocha.deploy.artifact import METADATA_KEY

    meta = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    if METADATA_KEY not in meta:
        return
    proto = onnx.load(str(target))
    if not any(p.key == METADATA_KEY for p in proto.metadata_props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta[METADATA_KEY]
        onnx.save(proto, str(target))


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])


def rank_layers(calibrated: Calibrated, layers: list[str], x: np.ndarray, workdir: Path) -> dict[str, float]:
    """Per layer: the logit error (MSE against fp32) of all-int8 minus that with this layer alone in fp32."""
    reference = _logits(calibrated.source, x)

    def error(exclude: list[str]) -> float:
        out = calibrated.quantize(workdir / "rank.onnx", exclude)
        return float(np.mean((_logits(out, x) - reference) ** 2))

    everything = error([])
    return {layer: everything - error([layer]) for layer in layers}


def int8_with_fallback(
    fp32: Path,
    out: Path,
    *,
    calibration,
    evaluate: Callable[[Path], float],
    max_drop_points: float,
    method: str = "minmax",
    rank_data=None,
    max_reverts: int | None = None,
    echo=print,
) -> FallbackResult:
    """Static int8 of `fp32` into `out`, with the fewest layers in fp32 that keep `evaluate` within budget.

    `calibration`: normalised inputs (a torch tensor or array) for the activation ranges; the first
    RANK_SAMPLES of `rank_data` (default: the calibration inputs) rank the layers. `evaluate(file)`
    returns the accuracy the caller judges on (tocha compress: validation accuracy through ONNX
    Runtime); `max_drop_points` is in percentage points of it. The result says which layers stayed
    fp32, in order, and the accuracy after each step; `out` holds the last one tried. Nothing but
    `out` is left behind, also on error.
    """
    x = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
    ranked_x = x if rank_data is None else np.ascontiguousarray(np.asarray(rank_data, dtype=np.float32))
    ranked_x = ranked_x[:RANK_SAMPLES]
    with tempfile.TemporaryDirectory(prefix=".tocha-int8-", dir=Path(out).parent) as tmp:
        work = Path(tmp)
        calibrated = Calibrated(fp32, x, method, work)
        reference = evaluate(calibrated.fp32)
        trial = work / "trial.onnx"
        result = FallbackResult(Path(out), reference, [evaluate(calibrated.quantize(trial, []))])

        def within() -> bool:
            return (reference - result.accuracy) * 100 <= max_drop_points

        echo(f"every layer int8: accuracy {result.accuracy:.4f} (fp32 {reference:.4f})")
        if not within():
            layers = calibrated.layers()
            result.sensitivity = rank_layers(calibrated, layers, ranked_x, work)
            order = sorted(layers, key=lambda name: -result.sensitivity[name])
            for layer in order[: max_reverts if max_reverts is not None else len(order)]:
                result.reverted.append(layer)
                result.accuracies.append(evaluate(calibrated.quantize(trial, result.reverted)))
                echo(
                    f"{layer} back to fp32 (sensitivity {result.sensitivity[layer]:.3g}): "
                    f"accuracy {result.accuracy:.4f}"
                )
                if within():
                    break
        result.within_budget = within()
        shutil.move(str(trial), str(out))
    return result
