"""`tocha eval`: a run's checkpoint on one split; metrics printed and written to RUN/eval-SPLIT.json."""

from __future__ import annotations

import argparse
import sys

from tocha.cli._common import DEVICE_HELP, device, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a run's best checkpoint (or a model file) on the test split")
    p.add_argument(
        "run",
        help="run folder written by 'tocha train', or a .onnx/.pt2 file from 'tocha export' / 'tocha compress' "
        "(evaluated on its run's split; metrics go to FILE.eval-SPLIT.json)",
    )
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default test)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    p.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=positive_int, default=512, help="evaluation batch size (default 512)")
    p.add_argument(
        "--json", action="store_true", help="print the JSON written to RUN/eval-SPLIT.json instead of a table"
    )
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from pathlib import Path

    from tocha.recipes.runs import evaluate_run

    if Path(args.run).suffix in (".onnx", ".pt2"):  # a file from `tocha export` / `tocha compress`
        from tocha.deploy.measure import evaluate_artifact

        result = evaluate_artifact(args.run, split=args.split, batch_size=args.batch_size)
    else:
        result = evaluate_run(
            args.run, split=args.split, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size
        )
    if args.json:
        print(result.json_text, end="")  # exactly what RUN/eval-SPLIT.json holds
    else:
        m = result.metrics
        print(m.report_text())
        print(f"{result.split} ({result.checkpoint} checkpoint): {m.headline(result.loss)}")
        if result.json_path:
            print(f"written: {result.json_path}")
    if result.not_written:  # the numbers above are still right; only the file is missing
        name = f"eval-{result.split}.json" if result.checkpoint == "best" else f"eval-{result.split}-last.json"
        print(f"tocha eval: note: {name} was not written in {args.run}: {result.not_written}", file=sys.stderr)
    return 0
