"""Distillation benchmark: the same small student trained alone and distilled from a teacher run.

    python benchmarks/distill.py TEACHER_RUN [--student model=cnn model.width=4] [--epochs 3] [--seeds 0,1,2]

Both students get the same data (the teacher's), config, epochs and seed; the only difference is
the loss (cross-entropy vs tocha's Hinton KD loss). Prints the test accuracy per seed and the mean
and spread (max - min) over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="teacher run folder")
    parser.add_argument("--student", nargs="*", default=["model=cnn", "model.width=4"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from tocha import config
    from tocha import runfolder as rf
    from tocha.harness import train
    from tocha.recipes.distill import Teacher, load_teacher
    from tocha.tasks import create

    teacher_cfg = config.to_dict(config.load(Path(args.teacher) / rf.CONFIG))
    base = [
        f"data={teacher_cfg['data']['name']}",
        f"epochs={args.epochs}",
        "log.progress=false",
        "log.tensorboard=false",
        *args.student,
    ]
    results: dict[str, list[float]] = {"alone": [], "distilled": []}
    seconds: dict[str, list[float]] = {"alone": [], "distilled": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for kind in ("alone", "distilled"):
            cfg = config.load(None, [*base, f"seed={seed}"])
            teacher = None
            if kind == "distilled":
                model, meta = load_teacher(args.teacher, torch.device("cpu"))
                teacher = Teacher(model, args.temperature, args.alpha, "auto", meta)
            t = time.perf_counter()
            result = train(cfg, task=create("classify", teacher=teacher))
            seconds[kind].append(time.perf_counter() - t)
            results[kind].append(result.test.accuracy)
            print(
                f"seed {seed} {kind:<9} test accuracy {result.test.accuracy:.4f} ({seconds[kind][-1]:.0f} s)",
                flush=True,
            )
    for kind, accs in results.items():
        print(
            f"{kind:<9} mean {statistics.mean(accs):.4f}  spread {max(accs) - min(accs):.4f}  "
            f"({len(accs)} seeds, {statistics.mean(seconds[kind]):.0f} s each)"
        )
    gain = (statistics.mean(results["distilled"]) - statistics.mean(results["alone"])) * 100
    print(
        f"distillation gain: {gain:+.2f} points (student {' '.join(args.student)}, {args.epochs} epochs, "
        f"T={args.temperature:g}, alpha={args.alpha:g})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "seconds": seconds, "gain_points": gain}))


if __name__ == "__main__":
    main()
