"""Time to a test accuracy on Fashion-MNIST: tocha's default CNN recipe vs seed 000's CNN tutorial loop.

The tutorial side is seed 000's CNN with its settings (batch 40, SGD lr 0.01, no normalisation,
torchvision dataset + ToTensor + DataLoader), evaluated on the test split after every epoch until
it reaches the target or `--max-seconds` of training. The tocha side is `tocha train` with its
defaults (the 3-conv BatchNorm CNN, AdamW, one-cycle, flips) at each of `--tocha-epochs`: the
one-cycle schedule depends on the run length, so the shortest run that reaches the target counts.
Only training time is compared (no data loading, no evaluation).

    python benchmarks/time_to_accuracy.py --target 0.90 --tocha-epochs 2,3,4 --max-seconds 900
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--tocha-epochs", default="2,3,4", help="comma-separated run lengths for tocha")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="training-time cap for the tutorial loop")
    parser.add_argument("--max-epochs", type=int, default=50)
    args = parser.parse_args()

    import tocha
    from tocha.bench.runners import tutorial
    from tocha.bench.workload import load_workload

    logging.getLogger("tocha").setLevel(logging.WARNING)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, target test accuracy {args.target}", flush=True
    )
    tocha_rows = []
    for epochs in (int(e) for e in args.tocha_epochs.split(",")):
        result = tocha.fit("cnn", "fashion-mnist", epochs=epochs, log={"progress": False})
        row = (epochs, result.summary["train_seconds"], result.test.accuracy)
        tocha_rows.append(row)
        print(f"tocha default CNN, epochs={epochs}: {row[1]:.1f} s training, test accuracy {row[2]:.4f}", flush=True)
    reached = [r for r in tocha_rows if r[2] >= args.target]
    best = min(reached, key=lambda r: r[1]) if reached else None

    w = load_workload(
        "fashion-mnist",
        "cnn",
        epochs=args.max_epochs,
        batch_size=40,
        lr=0.01,
        target=args.target,
        train_samples=None,
        seed=0,
    )
    w = replace(w, stop_at=args.target, max_seconds=args.max_seconds)
    start = time.perf_counter()
    m = tutorial(w, torch.device("cpu"))
    for epoch, (seconds, acc) in enumerate(m.curve, 1):
        print(f"tutorial seed CNN, epoch {epoch}: {seconds:.1f} s training, test accuracy {acc:.4f}")
    print(f"(tutorial wall time {time.perf_counter() - start:.0f} s)")
    t_tutorial = m.time_to(args.target)
    if best is None:
        print(f"tocha did not reach {args.target} with epochs in {args.tocha_epochs}")
    elif t_tutorial is None:
        print(
            f"tutorial did not reach {args.target} in {m.train_seconds:.0f} s ({len(m.curve)} epochs, best "
            f"{max(a for _, a in m.curve):.4f}); tocha reached it in {best[1]:.1f} s (epochs={best[0]}): "
            f"at least {m.train_seconds / best[1]:.1f}x faster"
        )
    else:
        print(
            f"time to {args.target}: tutorial {t_tutorial:.1f} s, tocha {best[1]:.1f} s (epochs={best[0]}): "
            f"{t_tutorial / best[1]:.1f}x faster"
        )


if __name__ == "__main__":
    main()
