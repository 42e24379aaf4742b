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


def edge_layers(model_path: Path) -> list[str]:
    """Names of the first and the last weight layer (Conv/Gemm/MatMul) of an ONNX graph, in graph order."""
    import onnx

    names = [
        n.name
        for n in onnx.load(str(model_path), load_external_data=False).graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
    ]
    return list(dict.fromkeys(names[:1] + names[-1:]))


def quantize_onnx(
    fp32: Path,
    int8: Path,
    *,
    dynamic: bool,
    calibration: torch.Tensor | None = None,
    method: str = "minmax",
    keep_edges: bool = True,
) -> None:
    """int8 ONNX from an fp32 export: static (calibrated QDQ) or dynamic (weights only); metadata kept.

    `keep_edges` leaves the first and last weight layers in fp32, the usual practice: the first
    sees raw pixels with few weights per channel, the last makes the decision. On the default CNN
    this took int8's top-1 agreement with fp32 from 95.2% to 99.7% for the same speed class.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tocha.deploy.artifact import METADATA_KEY

    prepared = int8.with_name(int8.stem + ".prep.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        source = prepared
    except Exception:  # pre-processing is an optimisation; quantize the plain export when it fails
        source = fp32
    exclude = edge_layers(source) if keep_edges else []
    try:
        if dynamic:
            quantize_dynamic(
                str(source), str(int8), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude
            )
        else:
            from tocha.deploy import calibrate

            batches = [calibration[i : i + 64].numpy() for i in range(0, len(calibration), 64)]
            cache = int8.with_name(int8.stem + ".calibration.json")
            calibrate.write_cache(calibrate.ranges(calibrate.collect(source, batches), method), cache)
            try:
                # The ranges are tocha's (see deploy/calibrate.py): ONNX Runtime reads them from the cache
                # and calibrates nothing itself; the MinMax label is the one the cache was written with.
                quantize_static(
                    str(source),
                    str(int8),
                    None,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude,
                    calibration_cache_path=str(cache),
                )
            finally:
                cache.unlink(missing_ok=True)
    finally:
        prepared.unlink(missing_ok=True)
    # Quantization drops the model's metadata: put the class names and normalisation back.
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    proto = onnx.load(str(int8))
    if not any(p.key == METADATA_KEY for p in proto.metadata_props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta[METADATA_KEY]
        onnx.save(proto, str(int8))


def prune_and_finetune(
    run_dir: Path,
    out_dir: Path,
    *,
    ratio: float,
    method: str,
    target: str,
    scope: str,
    rounds: int,
    epochs: int,
    lr: float | None,
    echo,
    round_to: int = 8,
) -> dict:
    """Prune the run's best model and fine-tune it with `tocha train`'s engine into the run folder `out_dir`."""
    from tocha import config
    from tocha import runfolder as rf
    from tocha.deploy.export import sample_inputs
    from tocha.deploy.prune import count_macs, count_params, prune_model
    from tocha.harness import train
    from tocha.models import ModelSpec
    from tocha.recipes.runs import load_run
    from tocha.tasks import create

    loaded = load_run(run_dir, "best", "cpu")
    model, meta = loaded.model, loaded.meta
    if not meta["image_size"]:
        raise UserError("pruning supports image models only for now", where="tocha compress --prune")
    run_cfg = config.load(run_dir / rf.CONFIG)
    base_lr = lr or float(run_cfg.lr) / 10
    example = sample_inputs(run_dir, meta, 2)
    macs0, params0 = count_macs(model, example), count_params(model)
    per_round = 1 - (1 - ratio) ** (1 / rounds)  # the same share of what is left, each round
    result = None
    for k in range(1, rounds + 1):
        pruned = prune_model(model, example, per_round, method=method, target=target, scope=scope, round_to=round_to)
        echo(f"round {k}/{rounds}: {pruned.summary()}")
        last = k == rounds
        round_epochs = max(1, epochs - (rounds - 1) * (epochs // rounds) if last else epochs // rounds)
        overrides = [
            f"epochs={round_epochs}",
            f"lr={base_lr:g}",
            "scheduler=cosine",
            "warmup_epochs=0",
            "resume=none",
            "overwrite=true",
            "early_stop.patience=0",
            f"out={out_dir}" if last else "out=none",
            # the pruned net is the starting point: no weights to load, nothing frozen
            "model.weights=none",
            "model.freeze=none",
            "unfreeze_at_epoch=0",
            "lr_backbone=auto",
        ]
        cfg = config.load(run_dir / rf.CONFIG, overrides)
        hooks = [p.register_hook(lambda g, m=mask: g * m) for p, mask in pruned.masks]  # masks stay zero
        try:
            pruned_note = {
                "pruned": {
                    "from": str(run_dir),
                    "method": method,
                    "target": target,
                    "scope": scope,
                    "ratio": ratio,
                    "rounds": rounds,
                    "round_to": round_to,
                }
            }
            task = create("classify", spec=ModelSpec.from_dict(meta["model"]), meta_extra=pruned_note)
            result = train(cfg, task=task, model=pruned.model.train())
        finally:
            for hook in hooks:
                hook.remove()
        model = result.model.cpu().eval()
    macs1, params1 = count_macs(model, example), count_params(model)
    info = {
        "macs_before": macs0,
        "macs_after": macs1,
        "params_before": params0,
        "params_after": params1,
        "reduction": 1 - (macs1 / macs0 if target == "macs" else params1 / params0),
        "test_accuracy": result.test.accuracy if result and result.test else None,
    }
    rf.write_json(
        out_dir / "prune.json",
        {"asked": ratio, "method": method, "target": target, "scope": scope, "rounds": rounds, **info},
    )
    return info


def compress_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    prune: float = 0.0,
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
    from tocha.deploy import measure
    from tocha.deploy.export import export_run
    from tocha.recipes.runs import load_split

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
    if prune and finetune_epochs < 1:
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
    path = rf.check_run_dir(run_dir)
    from tocha.recipes.runs import load_run

    load_run(path)  # an image classifier with a best checkpoint, before anything is written
    from tocha import folders

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
    if parsed_goal is not None:
        from tocha.deploy.search import goal_compress

        options = {
            "method": prune_method,
            "target": prune_target,
            "scope": prune_scope,
            "rounds": prune_steps,
            "epochs": finetune_epochs,
            "lr": finetune_lr,
            "round_to": prune_round_to,
        }
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
    meta = rf.read_meta(path)
    x_bench = torch.randn(batch, meta["in_channels"], meta["image_size"], meta["image_size"])
    data, artifacts = None, {}

    def measured(name: str, file: Path, macs: int | None) -> Step:
        """Accuracy, size and counts of one file; its latency is timed beside the best so far in `consider`."""
        nonlocal data
        artifact = artifacts[str(file)] = measure.open_artifact(str(file))
        data = data or {split: measure.split_data(artifact.meta, split) for split in ("val", "test")}
        return Step(
            name,
            str(file),
            measure.accuracy(artifact, data["val"]),
            float("nan"),
            artifact.bytes / 2**20,
            artifact.params,
            macs,
            measure.accuracy(artifact, data["test"]),
        )

    fp32 = export_run(path, "onnx", out=folder / "model-fp32.onnx")
    echo(
        f"fp32 ONNX: {fp32.path} (parity: max abs diff {fp32.parity.max_abs_diff:.1e}, "
        f"top-1 {fp32.parity.top1_agreement:.2%})"
    )
    steps = [measured("fp32", fp32.path, measure.run_macs(path))]
    best, decisions = steps[0], []

    def consider(step: Step, final: Path | None = None) -> bool:
        """Judge `step`; a file judged under a temporary name gets `final` (or its .rejected name) after."""
        nonlocal best
        # One timing, side by side (alternating rounds), gives both the verdict and the numbers in the table.
        pairing = measure.paired(artifacts[best.path].predict, artifacts[step.path].predict, x_bench)
        if steps[0] is best and steps[0].p50_ms != steps[0].p50_ms:  # the reference's first timing: its row
            steps[0] = best = dataclasses.replace(best, p50_ms=pairing.a_ms, vs=step.name, vs_p50_ms=pairing.b_ms)
        step = dataclasses.replace(
            step, p50_ms=pairing.b_ms, p90_ms=pairing.b_p90_ms, vs=best.name, vs_p50_ms=pairing.a_ms
        )
        keep, reason = judge(
            dataclasses.replace(best, p50_ms=pairing.a_ms), step, max_accuracy_drop, decided=pairing.decided
        )
        echo(reason)
        decisions.append(reason)
        named = final or Path(step.path)
        if not keep or final is not None:
            target = named if keep else named.with_name(named.stem + ".rejected.onnx")
            Path(step.path).rename(target)
            artifacts[str(target)] = artifacts.pop(step.path)
            step = dataclasses.replace(step, path=str(target))
        steps.append(step)
        best = step if keep else best
        return keep

    if prune:
        pruned_run = folder / "pruned"
        info = prune_and_finetune(
            path,
            pruned_run,
            ratio=prune,
            method=prune_method,
            target=prune_target,
            scope=prune_scope,
            rounds=prune_steps,
            epochs=finetune_epochs,
            lr=finetune_lr,
            echo=echo,
            round_to=prune_round_to,
        )
        exported = export_run(pruned_run, "onnx", out=folder / "model-pruned.onnx")
        consider(measured("pruned", exported.path, info["macs_after"]))

    if quantize != "none":
        calib = None
        if quantize == "int8":
            from tocha.engine.batches import DeviceTransform

            calib = DeviceTransform(meta["mean"], meta["std"], device=torch.device("cpu")).prepare(
                load_split(path, "train").head(calibration_batches * 64)
            )
        name = f"{best.name}+{quantize}" if best.name != "fp32" else quantize
        final = folder / f"model-{name.replace('+', '-')}.onnx"
        # Quantized and judged under a temporary name: a killed compress leaves no unjudged model-*.onnx.
        int8_path = folder / f".{final.stem}.tmp-{os.getpid()}.onnx"
        try:
            quantize_onnx(
                Path(best.path),
                int8_path,
                dynamic=quantize == "int8-dynamic",
                calibration=calib,
                method=calibration,
                keep_edges=not quantize_edges,
            )
        except Exception as exc:  # an operator the quantizer does not support, ...
            int8_path.unlink(missing_ok=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(
                f"int8 quantization of {best.path} failed: {type(exc).__name__}: {first}",
                where="tocha compress --quantize",
                fix="keep the fp32 export, or try --quantize int8-dynamic / --calibration entropy",
            ) from None
        consider(measured(name, int8_path, best.macs), final)

    report = {
        "batch": batch,
        "max_accuracy_drop_points": max_accuracy_drop,
        "quantize": quantize,
        "fp32_edge_layers": quantize != "none" and not quantize_edges,
        "calibration": calibration if quantize == "int8" else None,
        "calibration_samples": calibration_batches * 64 if quantize == "int8" else 0,
        "prune": {
            "ratio": prune,
            "method": prune_method,
            "target": prune_target,
            "scope": prune_scope,
            "rounds": prune_steps,
            "round_to": prune_round_to,
            "finetune_epochs": finetune_epochs,
        }
        if prune
        else None,
        "steps": [asdict(s) for s in steps],
        "kept": best.path,
        "decisions": decisions,
        "decision": decisions[-1] if decisions else "nothing to compare",
    }
    rf.write_json(folder / "compress.json", report)
    from tocha.reports.html import table_html, upsert_section

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
    return report


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
