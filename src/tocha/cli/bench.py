"""`tocha bench`: the tutorial loop, a raw loop, tocha and Lightning timed on the same workload."""

from __future__ import annotations

import argparse

from tocha.cli._common import fraction, positive_float, positive_int

DESCRIPTION = (
    "Train the same model with the same batches, optimizer and seed four ways, interleaved, after a "
    "warm-up, and print medians and ratios: samples/s, ms/step, step time relative to the raw loop, "
    "speed-up over the tutorial loop, test accuracy, time to a target accuracy, peak memory."
)
EPILOG = """\
runners:
  tutorial   torchvision dataset + ToTensor + DataLoader, as the seed tutorials write it
  raw        a hand-written loop over pre-made device tensors: the floor
  tocha      tocha.fit with the same model and optimizer
  lightning  PyTorch Lightning's Trainer, logger/checkpoints/progress off (when installed)

examples:
  tocha bench --quick
  tocha bench --model mlp --epochs 2 --repeats 3
  tocha bench --model cnn --devices cpu,cuda --json bench.json"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="time the tutorial loop, a raw loop, tocha and Lightning on the same workload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default="mlp",
        help="seed 004's MLP (batch 100, lr 0.5) or seed 000's CNN (batch 40, lr 0.01); default mlp",
    )
    p.add_argument(
        "--data",
        choices=("fashion-mnist", "digits"),
        default=None,
        help="default: fashion-mnist when its files are installed, else digits",
    )
    # --devices and --runners are checked by tocha.bench.suite (the runner registry lives there, beside torch)
    p.add_argument(
        "--devices",
        default="auto",
        help="comma-separated: cpu, cuda, auto (default auto: cuda if "
        "present, else cpu); cuda is skipped with a note when absent",
    )
    p.add_argument("--runners", default="tutorial,raw,tocha,lightning", help="which loops (default all four)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default 2; 1 with --quick)")
    p.add_argument(
        "--repeats", type=positive_int, default=None, help="timed runs per runner (default 3; 1 with --quick)"
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the seed tutorial's")
    p.add_argument("--lr", type=positive_float, default=None, help="SGD learning rate (default: the seed tutorial's)")
    p.add_argument(
        "--target",
        type=fraction,
        default=None,
        help="test accuracy for the time-to-target column (default 0.80 mlp, 0.85 cnn)",
    )
    p.add_argument(
        "--train-samples", type=positive_int, default=None, help="use only the first N training images (--quick: 6000)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for every runner (default: torch's default, every usable core)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data order (default 0)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass")
    p.add_argument("--quick", action="store_true", help="a smoke run: 6000 images, 1 epoch, 1 repeat")
    p.add_argument("--json", metavar="PATH", help="also write the medians as JSON")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.bench.suite import main as bench_main

    return bench_main(args)
