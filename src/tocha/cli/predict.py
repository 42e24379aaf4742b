"""`tocha predict`: top-k classes with probabilities for image files, from a run folder or an ONNX file."""

from __future__ import annotations

import argparse

from tocha.cli._common import DEVICE_HELP, device, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="top-k classes with probabilities for image files")
    p.add_argument("run", help="run folder written by 'tocha train', or an ONNX file from 'tocha export'")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=positive_int, default=3, help="how many classes to show (default 3)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    p.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.recipes.runs import predict_files

    predictions = predict_files(args.run, args.images, top_k=args.top_k, device=args.device, checkpoint=args.checkpoint)
    if args.json:
        import json

        print(
            json.dumps(
                [
                    {"file": p.file, "top": [{"class": c, "probability": round(q, 6)} for c, q in p.top]}
                    for p in predictions
                ],
                indent=2,
            )
        )
        return 0
    width = max(len(p.file) for p in predictions)
    for p in predictions:
        print(f"{p.file:<{width}}  " + "  ".join(f"{c} {q:.3f}" for c, q in p.top))
    return 0
