"""`tocha bench-model`: latency, throughput, size, parameters and test accuracy of deployable artifacts.

An artifact is a run folder (its best checkpoint, run by PyTorch) or a file from `tocha export` /
`tocha compress` (`.onnx` through ONNX Runtime, `.pt2` through torch.export). Latency is timed per
call after a warm-up, at each batch size, and reported as p50/p90.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tocha.errors import UserError

WARMUP_CALLS = 5


@dataclass(frozen=True)
class Artifact:
    name: str
    runtime: str                                     # "torch" | "ort"
    predict: Callable[[torch.Tensor], np.ndarray]    # normalised float inputs -> logits
    meta: dict
    bytes: int
    params: int


@dataclass(frozen=True)
class Row:
    artifact: str
    runtime: str
    batch: int
    p50_ms: float
    p90_ms: float
    samples_per_second: float
    megabytes: float
    params: int
    accuracy: float | None


def _onnx_params(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer))


def open_artifact(spec: str, threads: int | None = None) -> Artifact:
    path = Path(spec)
    if path.is_dir():
        from tocha import runfolder as rf
        from tocha.recipes.runs import load_run

        loaded = load_run(path, "best", "cpu")
        model = loaded.model.eval()

        def run_torch(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return model(x).numpy()

        params = sum(p.numel() for p in model.parameters())
        return Artifact(str(path), "torch", run_torch, {**loaded.meta, "run": str(path)},
                        (path / rf.BEST_WEIGHTS).stat().st_size, params)
    if not path.is_file():
        raise UserError(f"artifact '{spec}' does not exist", where="tocha bench-model",
                        fix="pass run folders or files written by 'tocha export' / 'tocha compress'")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        from tocha.deploy.export import onnx_predictor

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        predict, meta = onnx_predictor(path, options)
        return Artifact(str(path), "ort", predict, meta, path.stat().st_size, _onnx_params(path))
    if path.suffix == ".pt2":
        from tocha.deploy.export import METADATA_KEY

        extra = {f"{METADATA_KEY}.json": ""}
        module = torch.export.load(str(path), extra_files=extra).module()

        def run_pt2(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return module(x).numpy()

        params = sum(p.numel() for p in module.parameters())
        return Artifact(str(path), "torch", run_pt2, json.loads(extra[f"{METADATA_KEY}.json"]), path.stat().st_size,
                        params)
    raise UserError(f"cannot benchmark '{spec}'", where="tocha bench-model",
                    allowed="a run folder, a .onnx or a .pt2 file")


def test_data(meta: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The normalised test split of the run an artifact came from, when that run is still there."""
    from tocha.engine.batches import DeviceTransform
    from tocha.recipes.runs import load_split

    run = Path(meta.get("run", ""))
    if not (run / "config.yaml").is_file():
        return None
    split = load_split(run, "test", missing_ok=True) or load_split(run, "val")
    return DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(split.head()), split.labels


def accuracy(artifact: Artifact, data: tuple[torch.Tensor, torch.Tensor] | None, batch: int = 256) -> float | None:
    if data is None:
        return None
    x, y = data
    correct = sum(int((artifact.predict(x[i:i + batch]).argmax(1) == y[i:i + batch].numpy()).sum())
                  for i in range(0, len(y), batch))
    return correct / len(y)


def latency(predict: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, calls: int) -> tuple[float, float]:
    """(p50, p90) milliseconds per call, after a warm-up."""
    for _ in range(WARMUP_CALLS):
        predict(x)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        predict(x)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def bench_artifacts(specs: list[str], batches: list[int], *, calls: int = 50, threads: int | None = None
                    ) -> list[Row]:
    artifacts = [open_artifact(s, threads) for s in specs]
    shape = None
    rows = []
    for a in artifacts:
        c, s = a.meta["in_channels"], a.meta["image_size"]
        if shape and shape != (c, s):
            raise UserError(f"'{a.name}' takes {c}x{s}x{s} inputs, the first artifact {shape[0]}x{shape[1]}",
                            where="tocha bench-model", fix="compare artifacts of the same task")
        shape = (c, s)
        acc = accuracy(a, test_data(a.meta))
        for b in batches:
            x = torch.randn(b, c, s, s)
            p50, p90 = latency(a.predict, x, calls)
            rows.append(Row(a.name, a.runtime, b, p50, p90, b / (p50 / 1e3), a.bytes / 2**20, a.params, acc))
    return rows


def table(rows: list[Row]) -> str:
    header = (f"{'artifact':<40} {'runtime':<7} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>11} "
              f"{'MB':>7} {'params':>10} {'test acc':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r.artifact if len(r.artifact) <= 40 else "..." + r.artifact[-37:]
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
        lines.append(f"{name:<40} {r.runtime:<7} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
                     f"{r.samples_per_second:>11,.0f} {r.megabytes:>7.2f} {r.params:>10,} {acc:>9}")
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
