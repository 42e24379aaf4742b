"""Compression benchmark: fp32 ONNX vs int8, pruned, and pruned + int8, for one trained run.

(int8 keeps the first and last layer in fp32, as `tocha compress` does by default; int8-all
quantizes every layer, as `--quantize-edges` does.)

    python benchmarks/compress.py RUN [--prune 0.5] [--finetune-epochs 1] [--batches 1,64] [--out DIR]
    python benchmarks/compress.py RUN --goal speedup=1.8 --max-drop 1 --batch 64 [--batches 1,64] [--out DIR]

With --goal it runs `tocha compress --goal` (the search) instead, then times the chosen artifact
beside the fp32 ONNX again at every batch of --batches, each time in a fresh process, 3 times,
and prints the medians and the spread of the speed-up, with the val/test accuracy of both.

Builds the four ONNX artifacts with tocha's own pieces (export with parity check, ONNX Runtime
static int8, torch-pruning + fine-tune through the training engine), then times them in the same
process, interleaved round by round (so a change in the machine's load hits all alike), and prints
medians and ratios against fp32 ONNX: latency at each batch size, file size, MACs, test accuracy
on the whole test split, and top-1 agreement with fp32. Every step is kept here, whatever it
costs, so that the table shows all of them; `tocha compress` is the one that rejects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def build(run: Path, out: Path, calib: torch.Tensor, prune: float, finetune_epochs: int) -> None:
    from tocha.deploy.compress import prune_and_finetune, quantize_onnx
    from tocha.deploy.export import export_run

    fp32 = export_run(run, "onnx", out=out / "fp32.onnx", overwrite=True, samples=100_000).path
    quantize_onnx(fp32, out / "int8.onnx", dynamic=False, calibration=calib)
    quantize_onnx(fp32, out / "int8-all.onnx", dynamic=False, calibration=calib, keep_edges=False)
    prune_and_finetune(
        run,
        out / "pruned-run",
        ratio=prune,
        method="channels",
        target="macs",
        scope="uniform",
        rounds=1,
        epochs=finetune_epochs,
        lr=None,
        echo=print,
    )
    pruned = export_run(out / "pruned-run", "onnx", out=out / "pruned.onnx", overwrite=True, samples=100_000).path
    quantize_onnx(pruned, out / "pruned-int8.onnx", dynamic=False, calibration=calib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder written by tocha train")
    parser.add_argument("--prune", type=float, default=0.5, help="share of MACs to remove (default 0.5)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per artifact per round (default 5)")
    parser.add_argument("--out", default=None, help="folder for the artifacts (default RUN/bench-compress)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--reuse", action="store_true", help="time the artifacts already in --out instead of building them again"
    )
    parser.add_argument("--goal", default=None, help="run the goal search instead, e.g. speedup=1.8")
    parser.add_argument("--max-drop", type=float, default=1.0, help="with --goal: val accuracy points (default 1)")
    parser.add_argument("--batch", type=int, default=64, help="with --goal: the batch the goal is judged at")
    parser.add_argument("--time-budget", type=float, default=1800.0, help="with --goal: seconds (default 1800)")
    args = parser.parse_args()
    if args.goal:
        goal_benchmark(args)
        return

    from tocha import runfolder as rf
    from tocha.deploy import measure
    from tocha.engine.batches import DeviceTransform
    from tocha.recipes.runs import load_split

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "bench-compress"
    out.mkdir(parents=True, exist_ok=True)
    meta = rf.read_json(run / rf.META)
    calib = DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(
        load_split(run, "train").head(512)
    )

    t0 = time.perf_counter()
    if not args.reuse:
        build(run, out, calib, args.prune, args.finetune_epochs)
    build_seconds = time.perf_counter() - t0

    names = ["fp32", "int8", "int8-all", "pruned", "pruned-int8"]
    arts = {n: measure.open_artifact(str(out / f"{n}.onnx")) for n in names}
    x_test, y_test = measure.test_data(arts["fp32"].meta)
    logits = {
        n: np.concatenate([a.predict(x_test[i : i + 256]) for i in range(0, len(x_test), 256)]) for n, a in arts.items()
    }
    results = {
        n: {
            "accuracy": float((logits[n].argmax(1) == y_test.numpy()).mean()),
            "top1_agreement_with_fp32": float((logits[n].argmax(1) == logits["fp32"].argmax(1)).mean()),
            "megabytes": arts[n].bytes / 2**20,
            "macs": arts[n].macs,
            "params": arts[n].params,
        }
        for n in names
    }
    c, s = meta["in_channels"], meta["image_size"]
    for b in [int(v) for v in args.batches.split(",")]:
        x = torch.randn(b, c, s, s)
        times: dict[str, list[float]] = {n: [] for n in names}
        for a in arts.values():
            for _ in range(5):
                a.predict(x)  # warm-up
        for r in range(args.rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                for _ in range(args.calls):
                    t = time.perf_counter()
                    arts[n].predict(x)
                    times[n].append((time.perf_counter() - t) * 1e3)
        for n in names:
            results[n][f"p50_ms_batch{b}"] = statistics.median(times[n])

    base = results["fp32"]
    header = f"{'artifact':<12} {'test acc':>8} {'agree':>7} {'MB':>7} {'MACs':>12}"
    for b in args.batches.split(","):
        header += f" {'ms@' + b:>9} {'x@' + b:>6}"
    print(header)
    for n in names:
        r = results[n]
        line = (
            f"{n:<12} {r['accuracy']:>8.4f} {r['top1_agreement_with_fp32']:>7.2%} {r['megabytes']:>7.2f} "
            f"{r['macs'] or 0:>12,}"
        )
        for b in args.batches.split(","):
            line += f" {r['p50_ms_batch' + b]:>9.3f} {base['p50_ms_batch' + b] / r['p50_ms_batch' + b]:>5.2f}x"
        print(line)
    for n in names[1:]:
        print(
            f"{n}: {base['megabytes'] / results[n]['megabytes']:.2f}x smaller, accuracy "
            f"{(results[n]['accuracy'] - base['accuracy']) * 100:+.2f} points vs fp32"
        )
    print(
        f"model {meta['model']['name']}, {len(y_test)} test images, threads {torch.get_num_threads()}"
        + ("" if args.reuse else f", artifacts built in {build_seconds:.0f} s")
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "results": results}, indent=2))


def goal_benchmark(args) -> None:
    from tocha import runfolder as rf
    from tocha.deploy import timing
    from tocha.deploy.compress import compress_run

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "bench-goal"
    t0 = time.perf_counter()
    report = compress_run(
        run,
        out=out,
        goal=args.goal,
        max_accuracy_drop=args.max_drop,
        batch=args.batch,
        finetune_epochs=args.finetune_epochs,
        time_budget_s=args.time_budget,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    rows = {c["name"]: c for c in report["candidates"]}
    chosen, fp32 = rows[report["chosen"]], rows["fp32"]
    meta = rf.read_json(run / rf.META)
    shape = (meta["in_channels"], meta["image_size"], meta["image_size"])
    print(f"\n{report['why']} (search: {seconds:.0f} s)")
    val_drop = (chosen["val_accuracy"] - fp32["val_accuracy"]) * 100
    test_drop = (chosen["test_accuracy"] - fp32["test_accuracy"]) * 100
    print(
        f"chosen {chosen['name']}: val {chosen['val_accuracy']:.4f} ({val_drop:+.2f}), "
        f"test {chosen['test_accuracy']:.4f} ({test_drop:+.2f}), "
        f"{fp32['megabytes'] / chosen['megabytes']:.2f}x smaller ({chosen['megabytes']:.3f} MB), note: {chosen['note']}"
    )
    for b in [int(v) for v in args.batches.split(",")]:
        pairs = [timing.fresh_pairing(Path(fp32["path"]), Path(chosen["path"]), b, shape) for _ in range(3)]
        ratios = sorted(p.speedup for p in pairs)
        print(
            f"batch {b:>4}: fp32 {statistics.median(p.a_ms for p in pairs):.3f} ms, chosen "
            f"{statistics.median(p.b_ms for p in pairs):.3f} ms, speed-up {ratios[1]:.2f}x "
            f"(3 fresh-process timings: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
