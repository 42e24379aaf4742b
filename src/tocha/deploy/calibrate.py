"""Activation ranges for static int8, computed in tocha and handed to ONNX Runtime.

Called through `quantize_static`, ONNX Runtime's entropy calibrator cannot be given its bin
counts, so it has a single candidate threshold and returns the min/max range; "entropy" then did
nothing. Here every method is computed from the calibration activations themselves:

- `minmax`: the smallest and largest value seen;
- `percentile`: the range that holds all but the outer (100 - p)% of the values (p = 99.99),
  read from a 2048-bin histogram of each tensor;
- `entropy`: the clipping threshold whose quantized distribution is closest, by KL divergence,
  to the 2048-bin histogram of |x| (the TensorRT method: each candidate threshold clips the tail
  into its last bin and is compared with its own 128- or 256-level quantization).

The ranges go to `quantize_static` as a calibration cache (ONNX Runtime's own `TensorsData`
JSON), so the quantizer uses exactly these numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METHODS = ("minmax", "entropy", "percentile")
BINS = 2048
PERCENTILE = 99.99


def calibrated_tensors(model) -> list[str]:
    """The float tensors ONNX Runtime quantizes: inputs and outputs of nodes, not initializers."""
    from onnx import TensorProto

    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    weights = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if (
                info is not None
                and name not in weights
                and info.type.HasField("tensor_type")
                and info.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
            ):
                names.append(name)
    return list(dict.fromkeys(names))


def _session_with_all_outputs(path: Path):
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    names = calibrated_tensors(model)
    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.input)}
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(infos[name])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, names


def collect(path: Path, batches: list[np.ndarray]) -> dict[str, dict]:
    """Per tensor: min, max and two 2048-bin histograms (signed over [min, max]; |x| over [0, absmax]).

    Two passes over the calibration batches: the first finds the ranges the histograms need, so no
    activation is ever held beyond its batch."""
    session, names = _session_with_all_outputs(path)
    input_name = session.get_inputs()[0].name
    stats = {n: {"min": np.inf, "max": -np.inf} for n in names}
    for x in batches:
        for name, value in zip(names, session.run(names, {input_name: x})):
            s = stats[name]
            s["min"], s["max"] = min(s["min"], float(value.min())), max(s["max"], float(value.max()))
    for s in stats.values():
        s["hist"], s["abs_hist"] = np.zeros(BINS, np.int64), np.zeros(BINS, np.int64)
    for x in batches:
        for name, value in zip(names, session.run(names, {input_name: x})):
            s, v = stats[name], value.ravel().astype(np.float64)
            if s["max"] > s["min"]:
                s["hist"] += np.histogram(v, BINS, (s["min"], s["max"]))[0]
            absmax = max(abs(s["min"]), abs(s["max"]))
            if absmax > 0:
                s["abs_hist"] += np.histogram(np.abs(v), BINS, (0.0, absmax))[0]
    return stats


def percentile_range(s: dict, percentile: float = PERCENTILE) -> tuple[float, float]:
    lo, hi, hist = s["min"], s["max"], s["hist"]
    if hi <= lo or hist.sum() == 0:
        return lo, hi
    cdf = np.cumsum(hist) / hist.sum()
    edges = np.linspace(lo, hi, BINS + 1)
    tail = (100 - percentile) / 100
    # A one-signed tensor (after ReLU) keeps its natural end: only the long side is clipped.
    low = lo if lo >= 0 else float(edges[np.searchsorted(cdf, tail / 2)])
    high = hi if hi <= 0 else float(edges[min(BINS, np.searchsorted(cdf, 1 - (tail / 2 if lo < 0 else tail)) + 1)])
    return low, high


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_threshold(abs_hist: np.ndarray, absmax: float, levels: int) -> float:
    """The |x| threshold minimising KL(P || Q), P the clipped histogram, Q its `levels`-level quantization."""
    hist = abs_hist.astype(np.float64)
    if hist.sum() == 0 or absmax <= 0:
        return absmax
    best, best_i = np.inf, BINS
    for i in range(levels, BINS + 1, 8):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # the clipped tail lands in the last bin
        # Q: the first i bins merged into `levels` groups, each group's mass spread over its non-empty bins.
        groups = np.array_split(hist[:i], levels)
        q = np.concatenate([np.where(g > 0, g.sum() / max(1, np.count_nonzero(g)), 0.0) for g in groups])
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        q = np.where((p > 0) & (q == 0), 1e-12, q)  # a bin that Q leaves empty: finite, heavily penalised
        d = _kl(p, q)
        if d < best:
            best, best_i = d, i
    return absmax * best_i / BINS


def entropy_range(s: dict) -> tuple[float, float]:
    lo, hi = s["min"], s["max"]
    absmax = max(abs(lo), abs(hi))
    # uint8 activations: a one-signed tensor uses all 256 levels, a two-signed one 128 per side.
    threshold = entropy_threshold(s["abs_hist"], absmax, 256 if lo >= 0 or hi <= 0 else 128)
    return max(lo, -threshold), min(hi, threshold)


def ranges(stats: dict[str, dict], method: str) -> dict[str, tuple[float, float]]:
    pick = {"minmax": lambda s: (s["min"], s["max"]), "percentile": percentile_range, "entropy": entropy_range}
    out = {}
    for name, s in stats.items():
        lo, hi = pick[method](s)
        out[name] = (min(0.0, lo), max(0.0, hi))  # a quantized range holds zero exactly
    return out


def write_cache(tensor_ranges: dict[str, tuple[float, float]], path: Path) -> None:
    """ONNX Runtime's calibration cache (TensorsData JSON); labelled MinMax, the label quantize_static checks."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    data = {k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in tensor_ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
