"""Model registry: one dict from name to builder, filled here (STYLE habit 4).

Every builder takes the same plain arguments (a :class:`ModelSpec`) and returns an
``nn.Module`` mapping ``[N, C, H, W]`` (or ``[N, D]`` features) to ``[N, num_classes]`` logits.
"""

from __future__ import annotations

from tocha.errors import UserError, did_you_mean
from tocha.models.spec import ModelSpec

# name -> (module path of the builder, one-line description). Importing this file stays cheap.
MODELS: dict[str, tuple[str, str]] = {
    "mlp": ("tocha.models.small:build_mlp", "fully connected net, hidden sizes from model.hidden (seed 004)"),
    "cnn": (
        "tocha.models.small:build_cnn",
        "3 conv (BatchNorm, ReLU, max-pool) + 2 fully connected with dropout (seeds 000/002)",
    ),
    "resnet18": ("tocha.models.vision:build_torchvision", "torchvision ResNet-18, first conv adapted to the channels"),
    "mobilenet_v3_small": ("tocha.models.vision:build_torchvision", "torchvision MobileNetV3-Small"),
    "vgg11_bn": ("tocha.models.vision:build_torchvision", "torchvision VGG-11 with BatchNorm (needs image_size >= 32)"),
}

# Character language models (task=charlm): Embedding -> LSTM/GRU -> Linear, built from a TextModelSpec.
TEXT_MODELS: dict[str, str] = {
    "lstm": "Embedding -> stacked LSTM with dropout -> Linear (seed 002's text RNN); model.hidden, model.layers",
    "gru": "the same with GRU layers",
}

# What `model.dropout=auto` means: the seeds' CNN uses dropout; a 32-unit MLP only underfits with it.
DEFAULT_DROPOUT: dict[str, float] = {"cnn": 0.25}


def check_model_name(name: str) -> UserError | None:
    """None when `name` can be built, else the error to report (imports torchvision only if needed)."""
    if name in MODELS or ":" in name:
        return None
    from tocha.models.vision import torchvision_classifiers

    tv = torchvision_classifiers()
    if name in tv:
        return None
    return UserError(
        f"unknown model '{name}'",
        where="config key model.name",
        allowed=", ".join(MODELS) + ", any torchvision classifier (e.g. resnet50, efficientnet_b0), "
        "or package.module:function",
        fix=did_you_mean(name, list(MODELS) + tv) or "run 'tocha train --help' for the list",
    )


def build_model(spec: ModelSpec):
    """Build the model for `spec` on the CPU, in train mode, checked with one forward pass."""
    import importlib

    if err := check_model_name(spec.name):
        raise err
    if ":" in spec.name:
        from tocha.models.vision import build_user_model

        model = build_user_model(spec)
    else:
        target = MODELS.get(spec.name, ("tocha.models.vision:build_torchvision", ""))[0]
        module_name, _, fn = target.partition(":")
        model = getattr(importlib.import_module(module_name), fn)(spec)
    check_input_size(model, spec)
    return model


def check_input_size(model, spec: ModelSpec) -> None:
    """One forward pass of zeros shaped like the data: a model/data mismatch becomes a clear error."""
    import torch

    shape = (1, spec.in_channels) if spec.image_size == 0 else (1, spec.in_channels, spec.image_size, spec.image_size)
    was_training = model.training
    model.eval()  # BatchNorm in train mode refuses a batch of one
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape, device=next(iter(model.parameters()), torch.zeros(())).device))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        if "channels" in first and spec.image_size:
            other = 3 if spec.in_channels == 1 else 1
            fix = (
                f"the data has {spec.in_channels} channel(s): set data.channels={other} to convert the images, "
                "or build the model for the data's channels"
            )
        else:
            fix = "choose a larger image_size (e.g. image_size=32 or 64) or another model"
        raise UserError(
            f"model '{spec.name}' cannot take inputs of shape {list(shape)[1:]}: {first}",
            where="config keys model.name, image_size, data.channels",
            fix=fix,
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (1, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model '{spec.name}' returned {got} for one input; expected (1, {spec.num_classes}) logits",
            where="config key model.name",
            fix="make the model return [batch, num_classes] logits",
        )
