"""The compression steps, each a plain function: static/dynamic int8 of an ONNX file, and pruning
plus fine-tuning of a run. `tocha compress` runs them one after another; the goal search
(deploy/search.py) runs them as candidates.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tocha.errors import UserError


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
