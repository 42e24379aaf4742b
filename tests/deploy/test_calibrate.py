"""Calibration methods computed in tocha (deploy/calibrate.py) and handed to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from tocha.deploy import calibrate

onnx = pytest.importorskip("onnx")


def outlier_model(path):
    """x[N,8] -> MatMul -> Relu -> MatMul -> y[N,4]: the Relu output carries the input's outliers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(np.abs(rng.normal(size=(8, 16))).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    x = rng.normal(size=(16384, 8)).astype(np.float32)
    x[7, 3] = 200.0  # one outlier stretches the min/max range (16 of 262,144 values of r: < 0.01%)
    return [x[i : i + 2048] for i in range(0, len(x), 2048)]


def test_minmax_entropy_and_percentile_give_different_ranges_and_scales(tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    batches = outlier_model(tmp_path / "m.onnx")
    stats = calibrate.collect(tmp_path / "m.onnx", batches)
    got = {m: calibrate.ranges(stats, m)["r"] for m in calibrate.METHODS}
    assert got["minmax"][1] == pytest.approx(stats["r"]["max"])
    # Both clip the outliers: far below min/max, and not the same threshold.
    assert got["percentile"][1] < 0.5 * got["minmax"][1]
    assert got["entropy"][1] < 0.5 * got["minmax"][1]
    assert abs(got["entropy"][1] - got["percentile"][1]) > 0.01 * got["minmax"][1]
    assert all(lo == 0 for lo, _ in got.values())  # after a ReLU

    # And ONNX Runtime uses exactly these ranges: the scale of r in the quantized graph follows them.
    scales = {}
    for method in calibrate.METHODS:
        cache = tmp_path / f"{method}.json"
        calibrate.write_cache(calibrate.ranges(stats, method), cache)
        out = tmp_path / f"{method}.onnx"
        quantize_static(
            str(tmp_path / "m.onnx"),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )
        model = onnx.load(str(out))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r")
        scales[method] = float(inits[node.input[1]])
    assert scales["minmax"] == pytest.approx(got["minmax"][1] / 255, rel=1e-4)
    assert scales["entropy"] == pytest.approx(got["entropy"][1] / 255, rel=1e-4)
    assert len({round(s, 8) for s in scales.values()}) == 3, scales


def test_entropy_keeps_the_range_of_a_tensor_without_outliers():
    """A uniform histogram loses nothing by being kept whole: the KL search picks (nearly) the max."""
    hist = np.full(calibrate.BINS, 100, np.int64)
    assert calibrate.entropy_threshold(hist, 1.0, 256) > 0.95
