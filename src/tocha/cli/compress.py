"""`tocha compress`: prune and/or int8-quantize a run's model; each step is kept only if it pays."""

from __future__ import annotations

import argparse

from tocha.cli._common import in_range, non_negative_int, one_of, positive_float, positive_int

# The same names as tocha.deploy.prune / tocha.deploy.compress (they import torch; a test keeps them equal).
PRUNE_METHODS = ("channels", "masks")
PRUNE_TARGETS = ("macs", "params")
PRUNE_SCOPES = ("uniform", "global")
QUANTIZE = ("int8", "int8-dynamic", "none")
CALIBRATION = ("minmax", "entropy", "percentile")

DESCRIPTION = (
    "Export the run's model to fp32 ONNX and measure it on this machine. Then, when asked, prune "
    "channels (torch-pruning) and fine-tune with the same training engine, and quantize to int8 for "
    "ONNX Runtime. Every step is measured (test accuracy, latency) and kept only if it is faster and "
    "loses at most --max-accuracy-drop points against the best artifact so far; otherwise it is "
    "rejected, said so, and the better artifact stays the result."
)
EPILOG = """\
examples:
  tocha compress runs/cnn                              # int8 only
  tocha compress runs/cnn --prune 0.5 --finetune-epochs 2 --out runs/cnn-small
  tocha compress runs/cnn --prune 0.5 --quantize none   # prune + fine-tune only
  tocha compress runs/mlp --quantize int8-dynamic       # Linear-heavy models
  tocha compress runs/cnn --goal speedup=1.8 --max-drop 1 --batch 64 --out runs/cnn-fast   # search"""


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive duration such as 20m, 90s or 1h, got '{text}'")
    return seconds


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compress",
        help="prune and/or int8-quantize a run's model; each step kept only if it pays",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("run", help="run folder written by 'tocha train'")
    p.add_argument(
        "--prune",
        type=in_range(
            0,
            1,
            high_open=True,
            allowed="a fraction between 0 and 1, e.g. 0.5 to remove half the MACs (0 = no pruning)",
        ),
        default=None,
        metavar="RATIO",
        help="remove this share of the MACs (or --prune-target params) by pruning, e.g. 0.5 (default: no "
        "pruning; with --goal, the search finds the ratio by bisection on measured latency; 0 = none)",
    )
    p.add_argument(
        "--prune-method",
        type=one_of("value", PRUNE_METHODS),
        default="channels",
        help="channels (structured, torch-pruning: smaller and faster; default) or masks "
        "(torch.nn.utils.prune zeros: NOT faster, offered with a warning)",
    )
    p.add_argument(
        "--prune-target",
        type=one_of("value", PRUNE_TARGETS),
        default="macs",
        help="what --prune reduces: macs (default) or params",
    )
    p.add_argument(
        "--prune-scope",
        type=one_of("value", PRUNE_SCOPES),
        default="uniform",
        help="uniform (the same share of channels in every layer; default) or global (rank channels across layers)",
    )
    p.add_argument(
        "--prune-steps",
        type=positive_int,
        default=1,
        help="iterative pruning: reach the ratio in N prune + fine-tune rounds (default 1)",
    )
    p.add_argument(
        "--prune-round-to",
        type=positive_int,
        default=8,
        help="keep channel counts multiples of this (default 8: AVX2 kernels work in blocks of 8 "
        "channels; odd counts can make a pruned model slower; on an AVX-512 CPU 16 timed faster, "
        "see BENCHMARKS.md); 1 = exact",
    )
    p.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=2,
        help="fine-tuning epochs after pruning (default 2; with --goal, a pruned model fast enough "
        "but short on accuracy is fine-tuned again for up to 4x this)",
    )
    p.add_argument(
        "--finetune-lr",
        type=positive_float,
        default=None,
        help="fine-tuning learning rate (default: a tenth of the run's)",
    )
    p.add_argument(
        "--quantize",
        type=one_of("quantization", QUANTIZE),
        default="int8",
        help="int8 (static, calibrated; best for conv nets; default), int8-dynamic (weights only, "
        "activations at run time; for Linear/LSTM-heavy models), none",
    )
    p.add_argument(
        "--calibration",
        type=one_of("calibration method", CALIBRATION),
        default="minmax",
        help="minmax (default), entropy, percentile",
    )
    p.add_argument(
        "--quantize-edges",
        action="store_true",
        help="quantize the first and last layers too (default: they stay fp32, which keeps accuracy)",
    )
    p.add_argument("--calibration-batches", type=positive_int, default=8, help="training batches of 64 (default 8)")
    p.add_argument(
        "--max-accuracy-drop",
        type=in_range(0, 100, allowed="0 to 100 (percentage points)"),
        default=1.0,
        help="percentage points of validation accuracy a step may cost (default 1; test is only reported)",
    )
    p.add_argument(
        "--goal",
        metavar="KEY=VALUE",
        help="search instead of steps: speedup=X, latency_ms=X or size_mb=X at --batch; the fastest "
        "candidate within --max-drop val points wins, OUT/model.onnx is it",
    )
    p.add_argument(
        "--max-drop",
        dest="max_accuracy_drop",
        type=in_range(0, 100, allowed="0 to 100 (percentage points)"),
        default=argparse.SUPPRESS,
        help="the same as --max-accuracy-drop (points of validation accuracy)",
    )
    p.add_argument(
        "--time-budget",
        type=_duration,
        default=1200.0,
        metavar="TIME",
        help="search budget, e.g. 20m, 90s (default 20m)",
    )
    p.add_argument("--batch", type=positive_int, default=64, help="batch size for the latency check (default 64)")
    p.add_argument("--out", help="output folder (default RUN/compressed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.compress import compress_run, table

    report = compress_run(
        args.run,
        out=args.out,
        prune=args.prune,
        prune_method=args.prune_method,
        prune_target=args.prune_target,
        prune_scope=args.prune_scope,
        prune_steps=args.prune_steps,
        prune_round_to=args.prune_round_to,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        quantize=args.quantize,
        calibration_batches=args.calibration_batches,
        calibration=args.calibration,
        max_accuracy_drop=args.max_accuracy_drop,
        batch=args.batch,
        quantize_edges=args.quantize_edges,
        overwrite=args.overwrite,
        goal=args.goal,
        time_budget_s=args.time_budget,
        echo=lambda line: print(line, flush=True),
    )
    if args.goal:
        from tocha.deploy.search import table as search_table

        print(search_table(report))
        return 0
    print(table(report))
    return 0
