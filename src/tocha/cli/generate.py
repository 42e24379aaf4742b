"""`tocha generate`: stream text sampled from a character language model (task=charlm)."""

from __future__ import annotations

import argparse
import sys

from tocha.cli._common import DEVICE_HELP, device, non_negative_float, non_negative_int, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a character language model (task=charlm)",
        description="Stream characters sampled from a task=charlm run (or its .safetensors "
        "checkpoint alone) to the terminal.",
        epilog="examples:\n  tocha generate runs/lm --prompt 'The ' --length 400\n"
        "  tocha generate runs/lm/checkpoints/best.safetensors --temperature 0.5 "
        "--top-k 20 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder written by 'tocha train task=charlm', or one of its .safetensors files")
    p.add_argument("--prompt", default="", help="text to start from (default: a new line)")
    p.add_argument("--length", type=positive_int, default=400, help="characters to generate (default 400)")
    p.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.8,
        help="softmax temperature: lower is safer, higher more varied; 0 = always the likeliest (default 0.8)",
    )
    p.add_argument(
        "--top-k", type=non_negative_int, default=0, help="sample only among the k likeliest characters (0 = all)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    p.add_argument(
        "--skip-unknown", action="store_true", help="drop prompt characters the model never saw instead of stopping"
    )
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run folder")
    p.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.recipes.generate import generate

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate(
        args.run,
        args.prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        checkpoint=args.checkpoint,
        device=args.device,
        skip_unknown=args.skip_unknown,
        on_text=write,
    )
    sys.stdout.write("\n")
    return 0
