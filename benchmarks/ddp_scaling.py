"""The DDP numbers in BENCHMARKS.md: process scaling through the CLI, and DDP's wrapper overhead on one process.

    python benchmarks/ddp_scaling.py                  # both parts, about 10 minutes on a 2-core CPU
    python benchmarks/ddp_scaling.py --part overhead --device cuda   # single GPU vs DDP on that one GPU

Scaling: `tocha train` on Fashion-MNIST for one epoch, as one process with 2 threads, one process with
1 thread, and `--nproc 2` (one thread each), interleaved, `--repeats` times; the medians of the
training throughput each run writes to summary.json (evaluation and start-up excluded) and of the
wall time of the whole command (start-up included).

Overhead: the same model and batch stepped plainly and inside DistributedDataParallel on a
process group of one (gloo on CPU, nccl on CUDA), in 40 alternating blocks; the median step time
of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPS = [
    ("1 process, 2 threads", [], ["threads=2"]),
    ("1 process, 1 thread", [], ["threads=1"]),
    ("2 processes x 1 thread", ["--nproc", "2"], ["threads=1"]),
]
WORKLOADS = {
    "mlp": [str(ROOT / "configs/fashion_mnist_mlp.yaml")],
    "cnn": [str(ROOT / "configs/fashion_mnist_cnn.yaml")],
}


def one_run(workload: str, flags: list[str], keys: list[str], folder: Path) -> dict:
    out = folder / f"run-{time.monotonic_ns()}"
    command = [
        sys.executable,
        "-m",
        "tocha",
        "train",
        *flags,
        *WORKLOADS[workload],
        "epochs=1",
        "log.tensorboard=false",
        "log.progress=false",
        *keys,
        f"out={out}",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "samples_per_second": summary["train_samples_per_second"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "test_accuracy": summary["test"]["test.accuracy"],
    }


def scaling(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for workload in WORKLOADS:
            results: dict[str, list[dict]] = {name: [] for name, _, _ in SETUPS}
            for r in range(repeats):
                order = SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]  # rotate: no setup always goes first
                for name, flags, keys in order:
                    results[name].append(one_run(workload, flags, keys, Path(tmp)))
            base = statistics.median(x["samples_per_second"] for x in results[SETUPS[0][0]])
            print(f"\n{workload}, 1 epoch, median of {repeats}:")
            print("| setup | train samples/s | vs 1 process, 2 threads | train s | command wall s | test acc |")
            print("|---|---|---|---|---|---|")
            for name, rows in results.items():
                sps = statistics.median(x["samples_per_second"] for x in rows)
                print(
                    f"| {name} | {sps:,.0f} | {sps / base:.2f}x | "
                    f"{statistics.median(x['train_seconds'] for x in rows):.1f} | "
                    f"{statistics.median(x['wall_seconds'] for x in rows):.1f} | "
                    f"{statistics.median(x['test_accuracy'] for x in rows):.4f} |",
                    flush=True,
                )


def overhead(device_name: str, steps: int, repeats: int) -> None:
    import torch
    import torch.distributed as tdist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from tocha.models import ModelSpec, build_model

    device = torch.device(device_name)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:  # a free port for the one-process group's store
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 1, 10, 28, (32,), 16, 0.0)
    # channels_last, as tocha trains conv nets (the faster layout on CPU and GPU).
    plain = build_model(spec).to(device, memory_format=torch.channels_last)
    wrapped = DistributedDataParallel(
        build_model(spec).to(device, memory_format=torch.channels_last),
        device_ids=[device.index or 0] if device.type == "cuda" else None,
    )
    x = torch.randn(128, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)

    optimizers = {id(m): torch.optim.SGD(m.parameters(), lr=0.01) for m in (plain, wrapped)}

    def time_steps(model: nn.Module, n: int) -> float:
        optimizer = optimizers[id(model)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / n * 1000

    time_steps(plain, 5), time_steps(wrapped, 5)  # warm-up
    # Many short blocks, alternating: a machine whose load drifts affects both alike.
    times: dict[str, list[float]] = {"plain": [], "ddp": []}
    for r in range(repeats):
        for name in ("plain", "ddp") if r % 2 == 0 else ("ddp", "plain"):
            times[name].append(time_steps(plain if name == "plain" else wrapped, steps))
    p, d = statistics.median(times["plain"]), statistics.median(times["ddp"])
    q = lambda v: statistics.quantiles(v, n=4)  # noqa: E731 - quartiles, for the spread
    print(
        f"\nDDP wrapper on one process, {device}, default CNN, batch 128, {repeats} blocks of {steps} steps "
        f"each (torch threads {torch.get_num_threads()}):"
    )
    print(
        f"plain {p:.2f} ms/step (quartiles {q(times['plain'])[0]:.2f}-{q(times['plain'])[2]:.2f}), "
        f"DDP {d:.2f} ms/step (quartiles {q(times['ddp'])[0]:.2f}-{q(times['ddp'])[2]:.2f}): "
        f"overhead {100 * (d / p - 1):+.1f}% (median of per-block ratios "
        f"{100 * (statistics.median(b / a for a, b in zip(times['plain'], times['ddp'])) - 1):+.1f}%)"
    )
    tdist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "scaling", "overhead"), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="for the overhead part: cpu or cuda")
    args = parser.parse_args()
    if args.part in ("all", "overhead"):
        overhead(args.device, steps=5 if args.device == "cpu" else 50, repeats=40)
    if args.part in ("all", "scaling"):
        scaling(args.repeats)
