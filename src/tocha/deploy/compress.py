"""`tocha compress`: pruning and int8 quantization, each step measured and kept only if it pays.

The pipeline, each step against the best artifact so far, all on this machine's ONNX Runtime:

1. the run's model, exported to fp32 ONNX (with its parity check): the baseline;
2. `--prune R`: channels removed (torch-pruning) until MACs (or parameters) are down by R, then
   fine-tuned by the same training engine as `tocha train` into a run folder `OUT/pruned`; may be
   done in several prune + fine-tune rounds; exported to fp32 ONNX;
3. `--quantize int8`: static int8 of the best artifact so far (QDQ format, per-channel int8
   weights, uint8 activations, which is the fast combination for x86 CPUs; calibrated on N
   training batches), or `int8-dynamic` (int8 weights, activations quantized at run time; suits
   Linear/LSTM-heavy models, needs no calibration).

A step is kept only when it is faster and loses at most `max_accuracy_drop` percentage points of
validation accuracy (test accuracy is reported, never used to decide); otherwise it is rejected, said
so, and the better artifact stays the result. The verdict and the table beside it come from one
side-by-side timing; a timing whose rounds disagree is repeated, then called too noisy to decide.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

import torch

from tocha.deploy.steps import edge_layers, prune_and_finetune, quantize_onnx  # noqa: F401 - the steps it runs
from tocha.errors import UserError

CALIBRATION = ("minmax", "entropy", "percentile")
QUANTIZE = ("int8", "int8-dynamic", "none")


@dataclass(frozen=True)
class Step:
    name: str
    path: str
    accuracy: float | None  # validation accuracy: what decides
    p50_ms: float  # from the side-by-side timing that decided on it
    megabytes: float
    params: int | None = None
    macs: int | None = None
    test_accuracy: float | None = None  # reported, never used to decide
    vs: str | None = None  # the artifact it was timed beside
    vs_p50_ms: float | None = None  # that artifact's time in the same timing
    p90_ms: float | None = None


def judge(before: Step, after: Step, max_accuracy_drop: float, decided: bool = True) -> tuple[bool, str]:
    """Whether `after` pays for itself against `before`, and why (percentage points of validation accuracy).

    `before.p50_ms` and `after.p50_ms` come from one side-by-side timing; `decided` False (its rounds
    disagreed about which is faster, even when repeated) is never decided on."""
    speedup = before.p50_ms / after.p50_ms
    if not decided:
        return False, (
            f"{after.name}: too noisy to decide ({speedup:.2f}x the speed of {before.name} overall, but the "
            "timing rounds disagree): rejected"
        )
    drop = (
        (before.accuracy - after.accuracy) * 100 if before.accuracy is not None and after.accuracy is not None else 0.0
    )
    if speedup <= 1.0:
        return False, f"{after.name} is not faster ({speedup:.2f}x the speed of {before.name}): rejected"
    if drop > max_accuracy_drop:
        return False, (f"{after.name} costs {drop:.2f} accuracy points (allowed {max_accuracy_drop:g}): rejected")
    return True, (
        f"{after.name}: {speedup:.2f}x faster, {before.megabytes / after.megabytes:.1f}x smaller, "
        f"accuracy {-drop:+.2f} points: kept"
    )


def check_arguments(
    *,
    quantize: str,
    calibration: str,
    prune: float | None,
    prune_method: str,
    prune_target: str,
    prune_scope: str,
    finetune_epochs: int,
    goal: str | None,
):
    """Every option of `tocha compress` checked before anything is read or written; the parsed goal or None.

    `prune` None: no pruning step by step, a searched ratio with a goal."""
    if quantize not in QUANTIZE:
        raise UserError(
            f"unknown quantization '{quantize}'", where="tocha compress --quantize", allowed=", ".join(QUANTIZE)
        )
    if calibration not in CALIBRATION:
        raise UserError(
            f"unknown calibration method '{calibration}'",
            where="tocha compress --calibration",
            allowed=", ".join(CALIBRATION),
        )
    if prune:
        from tocha.deploy.prune import check_options

        check_options(prune, prune_method, prune_target, prune_scope)
    if (prune or prune is None) and finetune_epochs < 1:
        raise UserError(
            "--finetune-epochs must be at least 1 with --prune: a pruned model needs fine-tuning to "
            "recover its accuracy",
            where="tocha compress",
        )
    parsed_goal = None
    if goal is not None:
        from tocha.deploy.goals import parse_goal

        parsed_goal = parse_goal(goal)
    if not prune and quantize == "none" and parsed_goal is None:
        raise UserError(
            "nothing to do: no --prune and --quantize none",
            where="tocha compress",
            fix="pass --prune RATIO and/or --quantize int8",
        )
    return parsed_goal


def output_folder(path: Path, out: str | Path | None, overwrite: bool) -> Path:
    """OUT (default RUN/compressed), made or emptied of an earlier compress's files; refused if it is the run."""
    from tocha import folders
    from tocha.recipes.runs import load_run

    load_run(path)  # an image classifier with a best checkpoint, before anything is written
    folder = Path(out) if out else path / "compressed"
    folders.check_out_vs_source(
        folder, path, where="tocha compress --out", what="run being compressed", allowed_inside=("compressed",)
    )
    # --overwrite replaces what an earlier `tocha compress` wrote there, nothing else.
    folders.prepare(
        folder,
        "compress",
        overwrite=overwrite,
        where="tocha compress --out",
        label="output folder",
        overwrite_flag="--overwrite",
    )
    return folder


def compress_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    prune: float | None = None,
    prune_method: str = "channels",
    prune_target: str = "macs",
    prune_scope: str = "uniform",
    prune_steps: int = 1,
    prune_round_to: int = 8,
    finetune_epochs: int = 2,
    finetune_lr: float | None = None,
    quantize: str = "int8",
    calibration_batches: int = 8,
    calibration: str = "minmax",
    max_accuracy_drop: float = 1.0,
    batch: int = 64,
    quantize_edges: bool = False,
    overwrite: bool = False,
    goal: str | None = None,
    time_budget_s: float = 1200.0,
    echo=print,
) -> dict:
    from tocha import runfolder as rf

    if goal is None:
        prune = prune or 0.0  # step by step: no pruning unless asked; a goal search finds a ratio itself
    parsed_goal = check_arguments(
        quantize=quantize,
        calibration=calibration,
        prune=prune,
        prune_method=prune_method,
        prune_target=prune_target,
        prune_scope=prune_scope,
        finetune_epochs=finetune_epochs,
        goal=goal,
    )
    path = rf.check_run_dir(run_dir)
    folder = output_folder(path, out, overwrite)
    # prune_and_finetune's keyword arguments, for one fixed ratio or for each ratio the search tries
    options = {
        "method": prune_method,
        "target": prune_target,
        "scope": prune_scope,
        "rounds": prune_steps,
        "epochs": finetune_epochs,
        "lr": finetune_lr,
        "round_to": prune_round_to,
    }
    if parsed_goal is not None:
        from tocha.deploy.search import goal_compress

        return goal_compress(
            path,
            folder,
            goal=parsed_goal,
            max_drop=max_accuracy_drop,
            time_budget_s=time_budget_s,
            batch=batch,
            prune=prune,
            prune_options=options,
            calibration_batches=calibration_batches,
            echo=echo,
        )
    run = StepByStep(path, folder, batch=batch, max_drop=max_accuracy_drop, echo=echo)
    if prune:
        run.prune(prune, options)
    if quantize != "none":
        run.quantize(quantize, method=calibration, calibration_batches=calibration_batches, edges=quantize_edges)
    report = {
        "batch": batch,
        "max_accuracy_drop_points": max_accuracy_drop,
        "quantize": quantize,
        "fp32_edge_layers": quantize != "none" and not quantize_edges,
        "calibration": calibration if quantize == "int8" else None,
        "calibration_samples": calibration_batches * 64 if quantize == "int8" else 0,
        "prune": {
            "ratio": prune,
            **{k: options[k] for k in ("method", "target", "scope", "rounds", "round_to")},
            "finetune_epochs": finetune_epochs,
        }
        if prune
        else None,
        "steps": [asdict(s) for s in run.steps],
        "kept": run.best.path,
        "decisions": run.decisions,
        "decision": run.decisions[-1] if run.decisions else "nothing to compare",
    }
    write_step_report(path, folder, report, run.steps)
    return report


class StepByStep:
    """`tocha compress` without a goal: the fp32 export, then each step asked for, judged against the
    best file so far by one side-by-side timing (alternating rounds) that gives the verdict and its row."""

    def __init__(self, path: Path, folder: Path, *, batch: int, max_drop: float, echo) -> None:
        from tocha import runfolder as rf
        from tocha.deploy import measure
        from tocha.deploy.export import export_run

        self.path, self.folder, self.max_drop, self.echo = path, folder, max_drop, echo
        self.meta = rf.read_meta(path)
        self.x_bench = torch.randn(batch, self.meta["in_channels"], self.meta["image_size"], self.meta["image_size"])
        self.data: dict | None = None
        self.artifacts: dict = {}
        self.decisions: list[str] = []
        fp32 = export_run(path, "onnx", out=folder / "model-fp32.onnx")
        echo(
            f"fp32 ONNX: {fp32.path} (parity: max abs diff {fp32.parity.max_abs_diff:.1e}, "
            f"top-1 {fp32.parity.top1_agreement:.2%})"
        )
        self.steps = [self.measured("fp32", fp32.path, measure.run_macs(path))]
        self.best = self.steps[0]

    def measured(self, name: str, file: Path, macs: int | None) -> Step:
        """Accuracy, size and counts of one file; its latency is timed beside the best so far in `consider`."""
        from tocha.deploy import measure

        artifact = self.artifacts[str(file)] = measure.open_artifact(str(file))
        self.data = self.data or {split: measure.split_data(artifact.meta, split) for split in ("val", "test")}
        return Step(
            name,
            str(file),
            measure.accuracy(artifact, self.data["val"]),
            float("nan"),
            artifact.bytes / 2**20,
            artifact.params,
            macs,
            measure.accuracy(artifact, self.data["test"]),
        )

    def consider(self, step: Step, final: Path | None = None) -> bool:
        """Judge `step`; a file judged under a temporary name gets `final` (or its .rejected name) after."""
        from tocha.deploy import measure

        best = self.best
        pairing = measure.paired(self.artifacts[best.path].predict, self.artifacts[step.path].predict, self.x_bench)
        if self.steps[0] is best and best.p50_ms != best.p50_ms:  # the reference's first timing: its row
            self.steps[0] = best = dataclasses.replace(best, p50_ms=pairing.a_ms, vs=step.name, vs_p50_ms=pairing.b_ms)
        step = dataclasses.replace(
            step, p50_ms=pairing.b_ms, p90_ms=pairing.b_p90_ms, vs=best.name, vs_p50_ms=pairing.a_ms
        )
        keep, reason = judge(dataclasses.replace(best, p50_ms=pairing.a_ms), step, self.max_drop, pairing.decided)
        self.echo(reason)
        self.decisions.append(reason)
        named = final or Path(step.path)
        if not keep or final is not None:
            target = named if keep else named.with_name(named.stem + ".rejected.onnx")
            Path(step.path).rename(target)
            self.artifacts[str(target)] = self.artifacts.pop(step.path)
            step = dataclasses.replace(step, path=str(target))
        self.steps.append(step)
        self.best = step if keep else best
        return keep

    def prune(self, ratio: float, options: dict) -> bool:
        from tocha.deploy.export import export_run

        pruned_run = self.folder / "pruned"
        info = prune_and_finetune(self.path, pruned_run, ratio=ratio, echo=self.echo, **options)
        exported = export_run(pruned_run, "onnx", out=self.folder / "model-pruned.onnx")
        return self.consider(self.measured("pruned", exported.path, info["macs_after"]))

    def quantize(self, quantize: str, *, method: str, calibration_batches: int, edges: bool) -> bool:
        calib = None
        if quantize == "int8":
            from tocha.engine.batches import DeviceTransform
            from tocha.recipes.runs import load_split

            calib = DeviceTransform(self.meta["mean"], self.meta["std"], device=torch.device("cpu")).prepare(
                load_split(self.path, "train").head(calibration_batches * 64)
            )
        best = self.best
        name = f"{best.name}+{quantize}" if best.name != "fp32" else quantize
        final = self.folder / f"model-{name.replace('+', '-')}.onnx"
        # Quantized and judged under a temporary name: a killed compress leaves no unjudged model-*.onnx.
        int8_path = self.folder / f".{final.stem}.tmp-{os.getpid()}.onnx"
        try:
            quantize_onnx(
                Path(best.path),
                int8_path,
                dynamic=quantize == "int8-dynamic",
                calibration=calib,
                method=method,
                keep_edges=not edges,
            )
        except Exception as exc:  # an operator the quantizer does not support, ...
            int8_path.unlink(missing_ok=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(
                f"int8 quantization of {best.path} failed: {type(exc).__name__}: {first}",
                where="tocha compress --quantize",
                fix="keep the fp32 export, or try --quantize int8-dynamic / --calibration entropy",
            ) from None
        return self.consider(self.measured(name, int8_path, best.macs), final)


def write_step_report(path: Path, folder: Path, report: dict, steps: list[Step]) -> None:
    """OUT/compress.json and a dated table in the run's report.html."""
    from tocha import runfolder as rf

    rf.write_json(folder / "compress.json", report)
    from tocha.reports.html import table_html, upsert_section

    batch, decisions = report["batch"], report["decisions"]
    rows = [
        {
            "step": st.name,
            "val accuracy": st.accuracy,
            "test accuracy": st.test_accuracy,
            f"p50 ms @{batch}": st.p50_ms,
            "timed beside": f"{st.vs} ({st.vs_p50_ms:.3f} ms)" if st.vs else "-",
            "MB": st.megabytes,
            "params": st.params,
            "MACs": st.macs,
            "file": st.path,
        }
        for st in steps
    ]
    upsert_section(
        path,
        "compress",
        "Compression (tocha compress)",
        table_html(rows) + "".join(f"<p>{escape(d)}</p>" for d in decisions),
    )


def table(report: dict) -> str:
    """The steps with the timing each verdict came from: p50 beside the artifact it was timed with."""
    lines = [
        f"{'step':<12} {'val acc':>8} {'test acc':>9} {'p50 ms @' + str(report['batch']):>12} "
        f"{'beside':>18} {'MB':>7} {'MACs':>12}  file"
    ]
    for s in report["steps"]:
        val = "-" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
        test = "-" if s.get("test_accuracy") is None else f"{s['test_accuracy']:.4f}"
        macs = "-" if s.get("macs") is None else f"{s['macs']:,}"
        beside = f"{s['vs']} {s['vs_p50_ms']:.3f}" if s.get("vs") else "-"
        lines.append(
            f"{s['name']:<12} {val:>8} {test:>9} {s['p50_ms']:>12.3f} {beside:>18} {s['megabytes']:>7.2f} "
            f"{macs:>12}  {s['path']}"
        )
    lines.append(f"result: {report['kept']}")
    return "\n".join(lines)
