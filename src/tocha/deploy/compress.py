"""`tocha compress`: int8 post-training quantization through ONNX Runtime, measured, kept only if it pays.

The run's model is exported to fp32 ONNX (with its parity check), quantized statically to int8
(QDQ format, per-channel int8 weights, uint8 activations, which is the fast combination for x86
CPUs; calibrated on N training batches), and both files are measured on the same machine: test
accuracy and latency. The int8 file is kept only when it is faster and loses at most
`max_accuracy_drop` percentage points; otherwise the step is rejected, said so, and the fp32 file
stays the result.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tocha.errors import UserError

CALIBRATION = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Step:
    name: str
    path: str
    accuracy: float | None
    p50_ms: float
    megabytes: float


def judge(before: Step, after: Step, max_accuracy_drop: float) -> tuple[bool, str]:
    """Whether `after` pays for itself against `before`, and why (percentage points for accuracy)."""
    speedup = before.p50_ms / after.p50_ms
    drop = (before.accuracy - after.accuracy) * 100 if before.accuracy is not None and after.accuracy is not None \
        else 0.0
    if speedup <= 1.0:
        return False, f"{after.name} is not faster ({speedup:.2f}x the speed of {before.name}): rejected"
    if drop > max_accuracy_drop:
        return False, (f"{after.name} costs {drop:.2f} accuracy points (allowed {max_accuracy_drop:g}): rejected")
    return True, (f"{after.name}: {speedup:.2f}x faster, {before.megabytes / after.megabytes:.1f}x smaller, "
                  f"accuracy {-drop:+.2f} points: kept")


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over normalised training batches."""

    def __init__(self, x: torch.Tensor, input_name: str, batch: int) -> None:
        self.batches = iter([{input_name: x[i:i + batch].numpy()} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(fp32: Path, int8: Path, calibration: torch.Tensor, method: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tocha.deploy.export import METADATA_KEY

    prepared = int8.with_name(int8.stem + ".prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        source = prepared
    except Exception:  # pre-processing is an optimisation; quantize the plain export when it fails
        source = fp32
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    try:
        quantize_static(str(source), str(int8), _Calibration(calibration, input_name, 64), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
    finally:
        prepared.unlink(missing_ok=True)
    # Quantization drops the model's metadata: put the class names and normalisation back.
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    proto = onnx.load(str(int8))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta[METADATA_KEY]
    onnx.save(proto, str(int8))


def compress_run(run_dir: str | Path, *, out: str | Path | None = None, quantize: str = "int8",
                 calibration_batches: int = 8, calibration: str = "minmax", max_accuracy_drop: float = 1.0,
                 batch: int = 64, overwrite: bool = False, echo=print) -> dict:
    from tocha import runfolder as rf
    from tocha.deploy import measure
    from tocha.deploy.export import export_run
    from tocha.recipes.runs import load_split

    if quantize != "int8":
        raise UserError(f"unknown quantization '{quantize}'", where="tocha compress --quantize", allowed="int8")
    if calibration not in CALIBRATION:
        raise UserError(f"unknown calibration method '{calibration}'", where="tocha compress --calibration",
                        allowed=", ".join(CALIBRATION))
    path = rf.check_run_dir(run_dir)
    folder = Path(out) if out else path / "compressed"
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise UserError(f"'{folder}' already exists and is not empty", where="tocha compress --out",
                            fix="choose another --out, or pass --overwrite")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = export_run(path, "onnx", out=folder / "model-fp32.onnx")
    echo(f"fp32 ONNX: {fp32.path} (parity: max abs diff {fp32.parity.max_abs_diff:.1e}, "
         f"top-1 {fp32.parity.top1_agreement:.2%})")

    meta = rf.read_json(path / rf.META)
    train = load_split(path, "train")
    from tocha.engine.batches import DeviceTransform

    calib = DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(
        train.head(calibration_batches * 64))
    n = len(calib)
    int8_path = folder / "model-int8.onnx"
    try:
        quantize_int8(fp32.path, int8_path, calib, calibration)
    except Exception as exc:  # an operator the quantizer does not support, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"int8 quantization of {fp32.path} failed: {type(exc).__name__}: {first}",
                        where="tocha compress --quantize", fix="keep the fp32 export, or try --calibration entropy")

    steps = []
    data = None
    for name, file in (("fp32", fp32.path), ("int8", int8_path)):
        artifact = measure.open_artifact(str(file))
        data = data or measure.test_data(artifact.meta)
        p50, _ = measure.latency(artifact.predict, torch.randn(batch, meta["in_channels"], meta["image_size"],
                                                                meta["image_size"]), 30)
        steps.append(Step(name, str(file), measure.accuracy(artifact, data), p50, artifact.bytes / 2**20))
    keep, reason = judge(steps[0], steps[1], max_accuracy_drop)
    echo(reason)
    if not keep:
        rejected = int8_path.with_name("model-int8.rejected.onnx")
        int8_path.rename(rejected)
        steps[1] = Step("int8", str(rejected), steps[1].accuracy, steps[1].p50_ms, steps[1].megabytes)
    report = {"batch": batch, "max_accuracy_drop_points": max_accuracy_drop, "calibration": calibration,
              "calibration_samples": n, "steps": [asdict(s) for s in steps], "kept": steps[1 if keep else 0].path,
              "decision": reason}
    rf.write_json(folder / "compress.json", report)
    return report


def table(report: dict) -> str:
    lines = [f"{'step':<6} {'test acc':>9} {'p50 ms @' + str(report['batch']):>12} {'MB':>7}  file"]
    for s in report["steps"]:
        acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
        lines.append(f"{s['name']:<6} {acc:>9} {s['p50_ms']:>12.3f} {s['megabytes']:>7.2f}  {s['path']}")
    lines.append(f"result: {report['kept']}")
    return "\n".join(lines)

