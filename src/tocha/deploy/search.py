"""`tocha compress RUN --goal ...`: build the candidates, time each beside fp32, and pick by the goal.

Candidates, all on this machine's ONNX Runtime: static int8 with each calibration method
(minmax, entropy, percentile; first and last layer fp32), static int8 of every layer, int8-dynamic,
and with `--prune R` the pruned, fine-tuned model and its int8. The choice and the table come from
`goals.search`; this file only makes the artifacts and writes OUT/.
"""

from __future__ import annotations

import dataclasses
import shutil
from html import escape
from pathlib import Path

import torch

from tocha.deploy import goals


def goal_compress(
    path: Path,
    folder: Path,
    *,
    goal: goals.Goal,
    max_drop: float,
    time_budget_s: float,
    batch: int,
    prune: float,
    prune_options: dict,
    calibration_batches: int,
    echo=print,
) -> dict:
    from tocha import runfolder as rf
    from tocha.deploy import measure
    from tocha.deploy.export import export_run
    from tocha.deploy.steps import prune_and_finetune, quantize_onnx
    from tocha.engine.batches import DeviceTransform
    from tocha.recipes.runs import load_split

    meta = rf.read_json(path / rf.META)
    x_bench = torch.randn(batch, meta["in_channels"], meta["image_size"], meta["image_size"])
    fp32_file = export_run(path, "onnx", out=folder / "model-fp32.onnx").path
    ref_art = measure.open_artifact(str(fp32_file))
    data = {split: measure.split_data(ref_art.meta, split) for split in ("val", "test")}
    fp32_ms, fp32_p90 = measure.latency(ref_art.predict, x_bench, 30)
    fp32_mb = ref_art.bytes / 2**20
    goals.check_not_met(goal, fp32_ms, fp32_mb)
    reference = goals.Candidate(
        "fp32",
        measure.accuracy(ref_art, data["val"]),
        measure.accuracy(ref_art, data["test"]),
        fp32_ms,
        fp32_p90,
        fp32_ms,
        fp32_mb,
        ref_art.params,
        measure.run_macs(path),
        str(fp32_file),
        kept=True,
        why="the reference",
    )
    calib = DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(
        load_split(path, "train").head(calibration_batches * 64)
    )

    def candidate(name: str, file: Path, macs: int | None) -> goals.Candidate:
        art = measure.open_artifact(str(file))
        pairing = measure.paired(ref_art.predict, art.predict, x_bench)
        c = goals.Candidate(
            name,
            measure.accuracy(art, data["val"]),
            measure.accuracy(art, data["test"]),
            pairing.b_ms,
            pairing.b_p90_ms,
            pairing.a_ms,
            art.bytes / 2**20,
            art.params,
            macs,
            str(file),
        )
        if not pairing.decided:
            c.why = f"too noisy to decide ({pairing.speedup:.2f}x overall, the timing rounds disagree)"
        return c

    def int8(name: str, source: Path, macs, **kw):
        def build():
            out = folder / f"model-{name}.onnx"
            quantize_onnx(source, out, calibration=calib, **kw)
            return candidate(name, out, macs)

        return name, build

    builders = [
        int8("int8-minmax", fp32_file, reference.macs, dynamic=False, method="minmax"),
        int8("int8-entropy", fp32_file, reference.macs, dynamic=False, method="entropy"),
        int8("int8-percentile", fp32_file, reference.macs, dynamic=False, method="percentile"),
        int8("int8-all-layers", fp32_file, reference.macs, dynamic=False, method="minmax", keep_edges=False),
        int8("int8-dynamic", fp32_file, reference.macs, dynamic=True),
    ]
    if prune:
        pruned: dict = {}

        def build_pruned():
            info = prune_and_finetune(path, folder / "pruned", ratio=prune, echo=echo, **prune_options)
            pruned["file"] = export_run(folder / "pruned", "onnx", out=folder / "model-pruned.onnx").path
            pruned["macs"] = info["macs_after"]
            return candidate("pruned", pruned["file"], pruned["macs"])

        def build_pruned_int8():
            out = folder / "model-pruned-int8.onnx"
            quantize_onnx(pruned["file"], out, dynamic=False, calibration=calib, method="minmax")
            return candidate("pruned+int8", out, pruned["macs"])

        builders = [("pruned", build_pruned), ("pruned+int8", build_pruned_int8), *builders]

    def guarded(name, build):
        def run():
            try:
                return build()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # an operator a quantizer does not support: a rejected candidate
                c = dataclasses.replace(reference, name=name, kept=False, path=None)
                c.why = f"failed: {type(exc).__name__}: {str(exc).strip()[:160]}"
                return c

        return run

    result = goals.search(
        goal,
        reference,
        [(n, guarded(n, b)) for n, b in builders],
        max_drop=max_drop,
        time_budget_s=time_budget_s,
        echo=echo,
    )
    shutil.copyfile(result.chosen.path, folder / "model.onnx")
    front = {id(c) for c in goals.pareto([c for c in result.candidates if c.path])}
    rows = [
        {
            **{k: v for k, v in dataclasses.asdict(c).items()},
            "speedup": c.speedup,
            "pareto": id(c) in front,
        }
        for c in result.candidates
    ]
    report = {
        "goal": str(goal),
        "max_drop_points": max_drop,
        "batch": batch,
        "time_budget_s": time_budget_s,
        "judged_on": "val",
        "candidates": rows,
        "chosen": result.chosen.name,
        "chosen_path": result.chosen.path,
        "model": str(folder / "model.onnx"),
        "met": result.met,
        "why": result.why,
        "stopped": result.stopped,
    }
    rf.write_json(folder / "compress.json", report)
    from tocha.reports.html import table_html, upsert_section

    table = [
        {
            "candidate": r["name"],
            "val acc": r["val_accuracy"],
            "test acc": r["test_accuracy"],
            f"p50 ms @{batch}": r["p50_ms"],
            "fp32 ms (same timing)": r["fp32_ms"],
            "speedup": r["speedup"],
            "MB": r["megabytes"],
            "MACs": r["macs"],
            "pareto": "yes" if r["pareto"] else "",
            "verdict": ("kept: " if r["kept"] else "rejected: ") + r["why"],
        }
        for r in rows
    ]
    upsert_section(
        path,
        "compress",
        f"Compression search (tocha compress --goal {goal})",
        table_html(table) + f"<p>{escape(result.why)}</p>",
    )
    return report


def table(report: dict) -> str:
    lines = [f"{'candidate':<18} {'val acc':>8} {'test acc':>9} {'p50 ms':>9} {'speedup':>8} {'MB':>7}  verdict"]
    for r in report["candidates"]:
        val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        test = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(
            f"{r['name']:<18} {val:>8} {test:>9} {r['p50_ms']:>9.3f} {r['speedup']:>7.2f}x {r['megabytes']:>7.2f}  "
            f"{'kept' if r['kept'] else 'rejected'}: {r['why']}"
        )
    lines += [report["why"], f"result: {report['model']} (= {report['chosen_path']})"]
    return "\n".join(lines)
