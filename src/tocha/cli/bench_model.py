"""`tocha bench-model`: latency, throughput, size and accuracy of run folders and exported files."""

from __future__ import annotations

import argparse
from pathlib import Path

from tocha.cli._common import list_of, one_of, positive_int
from tocha.errors import UserError

RUNTIMES = ("torch", "ort")  # the same names as tocha.deploy.measure.RUNTIMES (a test keeps them equal)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench-model",
        help="latency, throughput, size and accuracy of runs and exported files",
        description="Time each artifact (a run folder, or a .onnx/.pt2 file from tocha "
        "export/compress) at each batch size after a warm-up: p50/p90 latency, "
        "samples/s, size on disk, parameters, and test accuracy on the run's "
        "test split.",
    )
    p.add_argument("artifacts", nargs="+", help="run folders and .onnx/.pt2 files")
    p.add_argument(
        "--batch",
        type=list_of("batch sizes", positive_int, "--batch 1,64"),
        default=[1, 64],
        help="comma-separated batch sizes (default 1,64)",
    )
    p.add_argument("--calls", type=positive_int, default=50, help="timed calls per batch size (default 50)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for both runtimes")
    p.add_argument(
        "--runtime",
        type=list_of("runtimes", one_of("runtime", RUNTIMES), "--runtime torch,ort"),
        default=[],
        help="comma-separated runtimes: torch, ort (a run folder is exported to ONNX for "
        "ort); default: each artifact's own",
    )
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.measure import bench_artifacts, record_in_runs, rows_json, table

    if args.json and Path(args.json).exists():
        raise UserError(f"'{args.json}' already exists", where="tocha bench-model --json", fix="choose a new file")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = bench_artifacts(
        args.artifacts, args.batch, calls=args.calls, threads=args.threads, runtimes=tuple(args.runtime)
    )
    print(table(rows))
    for path in record_in_runs(rows, args.artifacts):
        print(f"written: {path} (and a table in {path.parent / 'report.html'})")
    if args.json:
        Path(args.json).write_text(rows_json(rows))
        print(f"written: {args.json}")
    return 0
