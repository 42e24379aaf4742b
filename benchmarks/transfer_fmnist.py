"""Transfer learning on Fashion-MNIST: pretrain on classes 0-4, then learn classes 5-9 from 50 images per class.

    python benchmarks/transfer_fmnist.py [--seeds 0,1,2] [--epochs 15] [--out runs/transfer-bench]

1. Pretrain the default `cnn` on every training image of classes 0-4 (a tocha run folder).
2. For each seed, draw 50 training images per class of classes 5-9 (seeded) and train the same `cnn`,
   with the same images, epochs, batch size, optimizer and schedule, two ways:
   - scratch:  random initialisation;
   - transfer: `model.weights=<the pretraining run>` (new head), `model.freeze=backbone` for the first
     epoch (the new head learns on frozen features), then everything trains at the same lr
     (`unfreeze_at_epoch=2 lr_backbone=<lr>`);
   - transfer, nothing frozen: the pretrained weights as the starting point only.
3. Score both on all 5,000 test images of classes 5-9; print mean ± standard deviation (and the range)
   over the seeds and write the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import tocha
from tocha.data import load_data

FIRST, SECOND = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
LR = 3e-3
ARMS = (
    ("scratch", {"name": "cnn"}, {}),
    (
        "transfer: frozen 1 epoch, then all",
        {"name": "cnn", "weights": "", "freeze": ["backbone"]},
        {"unfreeze_at_epoch": 2, "lr_backbone": LR},
    ),
    ("transfer: nothing frozen", {"name": "cnn", "weights": ""}, {"lr_backbone": LR}),
)
COMMON = {"epochs": 15, "batch_size": 25, "lr": LR, "threads": 1, "log": {"tensorboard": False, "progress": False}}


def subset(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...], per_class: int | None, seed: int):
    """Images of `classes` (all, or `per_class` drawn at random each) with labels renumbered 0..len-1."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for new, old in enumerate(classes):
        idx = (y == old).nonzero().flatten()
        if per_class is not None:
            idx = idx[torch.randperm(len(idx), generator=g)[:per_class]]
        xs.append(x[idx])
        ys.append(torch.full((len(idx),), new, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=COMMON["epochs"])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--out", default="runs/transfer-bench")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_data("fashion-mnist", val_fraction=0.0)
    x_train, y_train = data.train.inputs, data.train.labels
    x_test, y_test = data.test.inputs, data.test.labels
    names = data.classes

    pretrained = out / "fmnist-first5"
    if not (pretrained / "checkpoints" / "best.safetensors").is_file():
        t = time.perf_counter()
        tocha.fit(
            "cnn",
            subset(x_train, y_train, FIRST, None, 0),
            test_data=subset(x_test, y_test, FIRST, None, 0),
            classes=[names[c] for c in FIRST],
            epochs=args.pretrain_epochs,
            out=str(pretrained),
            overwrite=True,
            log={"tensorboard": False, "progress": False},
            threads=2,
        )
        print(f"pretrained on classes 0-4 in {time.perf_counter() - t:.0f} s: {pretrained}", file=sys.stderr)

    test = subset(x_test, y_test, SECOND, None, 0)
    second_names = [names[c] for c in SECOND]
    common = {**COMMON, "epochs": args.epochs, "data": {"val_fraction": 0.0}, "monitor": "train.loss"}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        few = subset(x_train, y_train, SECOND, args.per_class, seed)
        for arm, model, extra in ARMS:
            model = {**model, "weights": str(pretrained)} if "weights" in model else model
            t = time.perf_counter()
            result = tocha.fit(model, few, test_data=test, classes=second_names, seed=seed, **common, **extra)
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "test_accuracy": result.test.accuracy,
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)

    print(
        f"\nFashion-MNIST classes 5-9 from {args.per_class} images per class; test = all {len(test[1])} test "
        f"images of classes 5-9; {args.epochs} epochs, batch {COMMON['batch_size']}, seeds {args.seeds}"
    )
    print("| arm | test accuracy, mean ± std | min – max | seconds per run |")
    print("|---|---|---|---|")
    for arm, _, _ in ARMS:
        accs = [r["test_accuracy"] for r in rows if r["arm"] == arm]
        secs = [r["seconds"] for r in rows if r["arm"] == arm]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"| {arm} | {statistics.mean(accs):.4f} ± {std:.4f} | {min(accs):.4f} – {max(accs):.4f} | "
            f"{statistics.median(secs):.1f} |"
        )
    (out / "transfer-results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nrows: {out / 'transfer-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
