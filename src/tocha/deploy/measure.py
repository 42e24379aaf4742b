"""`tocha bench-model`: latency, throughput, size, parameters and test accuracy of deployable artifacts.

An artifact is a run folder (its best checkpoint, run by PyTorch) or a file from `tocha export` /
`tocha compress` (`.onnx` through ONNX Runtime, `.pt2` through torch.export). Latency is timed per
call after a warm-up, at each batch size, and reported as p50/p90.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tocha.deploy.timing import WARMUP_CALLS, Pairing, paired  # noqa: F401 - the side-by-side timing
from tocha.errors import UserError


@dataclass(frozen=True)
class Artifact:
    name: str
    runtime: str  # "torch" | "ort"
    predict: Callable[[torch.Tensor], np.ndarray]  # normalised float inputs -> logits
    meta: dict
    bytes: int
    params: int
    macs: int | None = None


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
    macs: int | None = None


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
        model = loaded.inference_model.eval()  # what its export holds (flip TTA included)

        def run_torch(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return model(x).numpy()

        params = sum(p.numel() for p in model.parameters())
        return Artifact(
            str(path),
            "torch",
            run_torch,
            {**loaded.meta, "run": str(path)},
            (path / rf.BEST_WEIGHTS).stat().st_size,
            params,
            run_macs(path),
        )
    if not path.is_file():
        raise UserError(
            f"artifact '{spec}' does not exist",
            where="tocha bench-model",
            fix="pass run folders or files written by 'tocha export' / 'tocha compress'",
        )
    if path.suffix == ".onnx":
        import onnxruntime as ort

        from tocha.deploy.artifact import onnx_predictor

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        predict, meta = onnx_predictor(path, options)
        return Artifact(str(path), "ort", predict, meta, path.stat().st_size, _onnx_params(path), meta.get("macs"))
    if path.suffix == ".pt2":
        from tocha.deploy.artifact import METADATA_KEY

        extra = {f"{METADATA_KEY}.json": ""}
        module = torch.export.load(str(path), extra_files=extra).module()

        def run_pt2(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return module(x).numpy()

        params = sum(p.numel() for p in module.parameters())
        info = json.loads(extra[f"{METADATA_KEY}.json"])
        return Artifact(str(path), "torch", run_pt2, info, path.stat().st_size, params, info.get("macs"))
    raise UserError(
        f"cannot benchmark '{spec}'", where="tocha bench-model", allowed="a run folder, a .onnx or a .pt2 file"
    )


def run_macs(run_dir: Path) -> int:
    """MACs of one forward pass of a run's model on one input."""
    from tocha.deploy.prune import count_macs
    from tocha.recipes.runs import load_run

    loaded = load_run(run_dir, "best", "cpu")
    meta = loaded.meta
    shape = (1, meta["in_channels"]) + ((meta["image_size"],) * 2 if meta["image_size"] else ())
    return count_macs(loaded.model, torch.zeros(shape))


def evaluate_artifact(
    file: str | Path, *, split: str = "test", batch_size: int = 512, write: bool = True, top_k: int | None = None
):
    """An exported or compressed model file (.onnx through ONNX Runtime, .pt2) on a split of the run it
    came from (its metadata names the run); the metrics go to FILE.eval-SPLIT.json beside it."""
    from tocha import runfolder as rf
    from tocha.engine.batches import DeviceTransform, make_batches
    from tocha.engine.evaluate import evaluate_classifier
    from tocha.recipes.runs import eval_result, load_split

    path = Path(file)
    artifact = open_artifact(str(path))  # a clear error for a missing or foreign file
    meta = artifact.meta
    run = Path(meta.get("run", ""))
    if not (run / rf.CONFIG).is_file():
        raise UserError(
            f"'{path}' came from run '{meta.get('run')}', which is no longer there: its data splits are unknown",
            where="tocha eval",
            fix="evaluate the run folder itself, or restore it where it was",
        )
    chosen = load_split(run, split)
    cpu = torch.device("cpu")
    batches = make_batches(
        chosen,
        batch_size,
        device=cpu,
        transform=DeviceTransform(meta["mean"], meta["std"], device=cpu),
        train=False,
        workers=0,
        pin_memory=False,
        seed=0,
    )
    model = _ArtifactModule(artifact.predict)
    loss, metrics = evaluate_classifier(
        model, batches, classes=tuple(meta["classes"]), device=cpu, precision="fp32", top_k=top_k or 5
    )
    record = {"split": split, "artifact": str(path), "run": str(run), "loss": loss, **metrics.to_dict()}
    json_path = path.with_name(f"{path.name}.eval-{split}.json")
    return eval_result(json_path, record, write, split=split, loss=loss, metrics=metrics, checkpoint=path.name)


class _ArtifactModule(torch.nn.Module):
    """A model file's predict function (numpy logits) as a module the evaluation loop can call."""

    def __init__(self, predict) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.predict(x.float().contiguous()))


def test_data(meta: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The normalised test split of the run an artifact came from, when that run is still there."""
    return split_data(meta, "test")


def split_data(meta: dict, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A normalised split ("test" falls back to "val" when the run has none) of an artifact's run."""
    from tocha.engine.batches import DeviceTransform
    from tocha.recipes.runs import load_split

    run = Path(meta.get("run", ""))
    if not (run / "config.yaml").is_file():
        return None
    data = load_split(run, split, missing_ok=True) or (load_split(run, "val") if split == "test" else None)
    if data is None:
        return None
    return DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(data.head()), data.labels


def accuracy(artifact: Artifact, data: tuple[torch.Tensor, torch.Tensor] | None, batch: int = 256) -> float | None:
    if data is None:
        return None
    x, y = data
    correct = sum(
        int((artifact.predict(x[i : i + batch]).argmax(1) == y[i : i + batch].numpy()).sum())
        for i in range(0, len(y), batch)
    )
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


def paired_latency(
    a: Callable[[torch.Tensor], np.ndarray],
    b: Callable[[torch.Tensor], np.ndarray],
    x: torch.Tensor,
    rounds: int = 8,
    calls: int = 5,
) -> tuple[float, float]:
    """Median ms per call of `a` and `b`, timed in alternating rounds so that a change in the machine's
    load hits both alike: the fair way to decide which of two artifacts is faster on a busy machine."""
    pairing = paired(a, b, x, rounds=rounds, calls=calls, attempts=1)
    return pairing.a_ms, pairing.b_ms


RUNTIMES = ("torch", "ort")


def _as_onnx(run_dir: Path, folder: Path, threads: int | None) -> Artifact:
    """A run folder's model through ONNX Runtime: exported (with its parity check) into `folder`."""
    from tocha.deploy.export import export_run

    exported = export_run(run_dir, "onnx", out=folder / f"{run_dir.name}.onnx", samples=64)
    artifact = open_artifact(str(exported.path), threads)
    return dataclasses.replace(artifact, name=f"{run_dir} (onnx)")


def bench_artifacts(
    specs: list[str], batches: list[int], *, calls: int = 50, threads: int | None = None, runtimes: tuple[str, ...] = ()
) -> list[Row]:
    """Rows for every artifact x runtime x batch size; `runtimes` empty = each artifact's own runtime."""
    import tempfile

    if bad := [r for r in runtimes if r not in RUNTIMES]:
        raise UserError(f"unknown runtime '{bad[0]}'", where="tocha bench-model --runtime", allowed=", ".join(RUNTIMES))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tocha-bench-") as tmp:
        artifacts = []
        for spec in specs:
            own = open_artifact(spec, threads)
            if not runtimes or own.runtime in runtimes:
                artifacts.append(own)
            if "ort" in runtimes and own.runtime == "torch" and Path(spec).is_dir():
                artifacts.append(_as_onnx(Path(spec), Path(tmp), threads))
        shape = None
        for a in artifacts:
            c, s = a.meta["in_channels"], a.meta["image_size"]
            if shape and shape != (c, s):
                raise UserError(
                    f"'{a.name}' takes {c}x{s}x{s} inputs, the first artifact {shape[0]}x{shape[1]}",
                    where="tocha bench-model",
                    fix="compare artifacts of the same task",
                )
            shape = (c, s)
            acc = accuracy(a, test_data(a.meta))
            for b in batches:
                x = torch.randn(b, c, s, s)
                p50, p90 = latency(a.predict, x, calls)
                rows.append(
                    Row(a.name, a.runtime, b, p50, p90, b / (p50 / 1e3), a.bytes / 2**20, a.params, acc, a.macs)
                )
    return rows


def record_in_runs(rows: list[Row], specs: list[str]) -> list[Path]:
    """Write bench.json and a table into report.html of every run folder among `specs`."""
    from tocha import runfolder as rf
    from tocha.reports.html import table_html, upsert_section

    written = []
    for run in dict.fromkeys(Path(spec) for spec in specs if Path(spec).is_dir()):
        rf.write_json(run / "bench.json", [asdict(r) for r in rows])
        upsert_section(
            run, "bench-model", "Deployment benchmark (tocha bench-model)", table_html([_report_row(r) for r in rows])
        )
        written.append(run / "bench.json")
    return written


def _report_row(r: Row) -> dict:
    return {
        "artifact": r.artifact,
        "runtime": r.runtime,
        "batch": r.batch,
        "p50 ms": r.p50_ms,
        "p90 ms": r.p90_ms,
        "samples/s": round(r.samples_per_second),
        "MB": r.megabytes,
        "params": r.params,
        "MACs": r.macs,
        "test accuracy": r.accuracy,
    }


def table(rows: list[Row]) -> str:
    header = (
        f"{'artifact':<40} {'runtime':<7} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>11} "
        f"{'MB':>7} {'params':>10} {'MACs':>12} {'test acc':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r.artifact if len(r.artifact) <= 40 else "..." + r.artifact[-37:]
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
        macs = "-" if r.macs is None else f"{r.macs:,}"
        lines.append(
            f"{name:<40} {r.runtime:<7} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
            f"{r.samples_per_second:>11,.0f} {r.megabytes:>7.2f} {r.params:>10,} {macs:>12} {acc:>9}"
        )
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
