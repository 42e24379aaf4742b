"""Time to a test accuracy on Fashion-MNIST: recipe candidates over several seeds, mean and spread.

Each candidate is a list of `tocha train` overrides (the presets, the old default, ablations of
one recipe tool each). Every candidate runs once per seed, seed-major (seed 0 of every
candidate, then seed 1, ...), so a change in machine load hits all candidates alike. A row
reports the mean and the spread (max - min) of the test accuracy and of summary.json's
`train_seconds` (training only: no data loading, no evaluation). A choice is kept only when its
mean wins by more than the spreads.

    python benchmarks/time_to_accuracy.py --candidates fast,best --seeds 0,1,2
    python benchmarks/time_to_accuracy.py --candidates fast --extra ema=none   # an ablation
    python benchmarks/time_to_accuracy.py --candidate mine="epochs=2 batch_size=256"

The tutorial loop (seed 000's CNN, batch 40, SGD lr 0.01, torchvision dataset + ToTensor +
DataLoader) is timed with --tutorial; it needs more than 600 s to reach 0.90 on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

CANDIDATES: dict[str, list[str]] = {
    "fast": ["preset=fast"],
    "best": ["preset=best"],
    "default": [],
    # the recipe before issue 17: 3-conv CNN, AdamW, one-cycle, flips, 6 epochs
    "old-default": ["preset=none", "epochs=6"],
}


def run_one(overrides: list[str], seed: int) -> dict:
    """One `tocha train` in a fresh process, as a user runs it: every candidate pays the same start-up
    (thread probe, kernel set-up), instead of the first candidate of a session paying for the rest."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "tocha", "train", *overrides, f"seed={seed}", f"out={out}"]
        command += ["log.progress=false", "log.tensorboard=false"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        config = (out / "config.yaml").read_text()
    found = re.search(r"^model +\S+: ([\d,]+) parameters", done.stdout + done.stderr, re.M)
    return {
        "test_accuracy": summary["test"]["test.accuracy"],
        "train_seconds": summary["train_seconds"],
        "epochs": int(re.search(r"^epochs: (\d+)", config, re.M).group(1)),
        "parameters": int(found.group(1).replace(",", "")) if found else 0,
        "time_budget": summary.get("time_budget"),  # what time_budget_s planned (None without one)
    }


def spread(values: list[float]) -> float:
    return max(values) - min(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="fast,best", help=f"comma-separated names from {', '.join(CANDIDATES)}")
    parser.add_argument(
        "--candidate", action="append", default=[], metavar='NAME="k=v k=v"', help="an ad-hoc candidate"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every candidate")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=0.90, help="accuracy a candidate is checked against")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--tutorial", action="store_true", help="also time the tutorial loop to --target")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="training-time cap for the tutorial loop")
    args = parser.parse_args()

    import torch

    logging.getLogger("tocha").setLevel(logging.WARNING)
    chosen = {name: CANDIDATES[name] for name in args.candidates.split(",") if name}
    for item in args.candidate:
        name, _, text = item.partition("=")
        chosen[name] = text.split()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, load average {os.getloadavg()}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    for seed in seeds:
        for name, overrides in chosen.items():
            row = run_one([*overrides, *args.extra], seed)
            row["load_1min"] = round(os.getloadavg()[0], 2)
            runs[name].append(row)
            plan = row["time_budget"]
            planned = f", {row['epochs']} epochs"
            if plan and "epoch_seconds_estimate" in plan:
                planned += f" (time_budget_s: {plan.get('planned_before_training', plan['epochs'])} planned at "
                first = plan.get("first_epoch_seconds", float("nan"))
                planned += f"~{plan['epoch_seconds_estimate']:.2f} s each, the first took {first:.2f} s)"
            print(
                f"  {name} seed={seed}: test {row['test_accuracy']:.4f}, {row['train_seconds']:.1f} s{planned} "
                f"(load {row['load_1min']})",
                flush=True,
            )
    summary = []
    print(
        "\n| candidate | overrides | params | test accuracy (mean, spread) | train s (mean, spread) | "
        f">= {args.target} |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in runs.items():
        acc = [r["test_accuracy"] for r in rows]
        sec = [r["train_seconds"] for r in rows]
        line = {
            "candidate": name,
            "overrides": [*chosen[name], *args.extra],
            "seeds": seeds,
            "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_spread": spread(acc),
            "train_seconds_mean": statistics.mean(sec),
            "train_seconds_spread": spread(sec),
            "load_1min": [r["load_1min"] for r in rows],
            "runs": rows,
        }
        summary.append(line)
        print(
            f"| {name} | `{' '.join(line['overrides']) or '(defaults)'}` | {rows[0]['parameters']:,} | "
            f"{line['test_accuracy_mean']:.4f} ± {line['test_accuracy_spread'] / 2:.4f} | "
            f"{line['train_seconds_mean']:.1f} ± {line['train_seconds_spread'] / 2:.1f} | "
            f"{'yes' if line['test_accuracy_mean'] >= args.target else 'no'} |"
        )
    print("(± is half the spread: max - min over the seeds)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    if args.tutorial:
        tutorial_time(args.target, args.max_seconds)


def tutorial_time(target: float, max_seconds: float) -> None:
    import torch

    from tocha.bench.runners import tutorial
    from tocha.bench.workload import load_workload

    w = load_workload(
        "fashion-mnist", "cnn", epochs=50, batch_size=40, lr=0.01, target=target, train_samples=None, seed=0
    )
    w = replace(w, stop_at=target, max_seconds=max_seconds)
    start = time.perf_counter()
    m = tutorial(w, torch.device("cpu"))
    for epoch, (seconds, acc) in enumerate(m.curve, 1):
        print(f"tutorial seed CNN, epoch {epoch}: {seconds:.1f} s training, test accuracy {acc:.4f}")
    reached = m.time_to(target)
    outcome = f"reached {target} in {reached:.1f} s" if reached else f"not {target} in {m.train_seconds:.0f} s"
    print(f"tutorial: {outcome} (wall {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
