"""The report's configuration: only the keys that apply to the run's task, model and settings.

config.yaml keeps every key (it is fed back as it is); the report leaves out what had no effect,
e.g. SGD momentum on an adamw run or the language-model window length on a classifier.
"""

from __future__ import annotations

from typing import Any

# model keys each model family reads; other models' keys are left out
_IMAGE_KEYS = {"dropout", "bn_momentum", "whiten"}
MODEL_KEYS = {
    "cnn": {"width"} | _IMAGE_KEYS,
    "mlp": {"hidden", "dropout"},
    "resnet18": _IMAGE_KEYS,
    "mobilenet_v3_small": _IMAGE_KEYS,
    "vgg11_bn": _IMAGE_KEYS,
    "lstm": {"hidden", "layers", "dropout", "tie_weights"},
    "gru": {"hidden", "layers", "dropout", "tie_weights"},
}


def applicable(
    config: dict[str, Any],
    world_size: int = 1,
    *,
    other_tasks_keys: frozenset[str] = frozenset(),
    data_keys: frozenset[str] | None = None,
) -> dict[str, Any]:
    """A copy of `config` (config.to_dict) without the keys that do not apply to this run.

    `other_tasks_keys`: keys that only other tasks read; `data_keys`: the data.* keys this task reads
    (None: all). The task registry knows both; the harness passes them in.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    drop = set(other_tasks_keys)
    if out.get("optimizer") != "sgd":
        drop |= {"momentum", "nesterov"}
    if out.get("scheduler") != "step":
        drop |= {"step_epochs", "step_gamma"}
    if out.get("scheduler") == "onecycle":
        drop.add("warmup_epochs")  # onecycle warms up by its own rule
    if not out.get("max_steps"):
        drop.add("max_steps")
    if not out.get("limit_val_batches"):
        drop.add("limit_val_batches")
    if world_size == 1:
        drop.add("dist")
    model = out.get("model")
    if isinstance(model, dict):
        if not (model.get("freeze") or model.get("weights")):
            drop |= {"unfreeze_at_epoch", "lr_backbone"}
            model.pop("freeze", None), model.pop("weights", None)
        keys = MODEL_KEYS.get(str(model.get("name")))
        if keys is not None:
            for key in [k for k in model if k not in keys | {"name", "weights", "freeze"}]:
                model.pop(key)
    data = out.get("data")
    if isinstance(data, dict) and data_keys is not None:
        for key in [k for k in data if k not in data_keys]:
            data.pop(key)
    if isinstance(data, dict) and data.get("name") != "imagefolder":
        data.pop("on_bad_file", None)
    return {k: v for k, v in out.items() if k not in drop}
