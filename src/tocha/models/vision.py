"""torchvision classifiers (never with downloaded weights) and user models given as module:function."""

from __future__ import annotations

import functools
import importlib
import inspect

from torch import nn

from tocha.errors import UserError
from tocha.models.spec import ModelSpec


@functools.cache
def torchvision_classifiers() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(spec: ModelSpec) -> nn.Module:
    import torchvision

    if spec.image_size == 0:
        raise UserError(
            f"model '{spec.name}' needs image inputs, but the data are flat feature vectors",
            where="config key model.name",
            fix="use model=mlp",
        )
    # weights=None: tocha never downloads at run time; local weights come through model.weights.
    model = torchvision.models.get_model(spec.name, weights=None, num_classes=spec.num_classes)
    if spec.in_channels != 3:
        _adapt_first_conv(model, spec.in_channels)
    _set_bn_momentum(model, spec.bn_momentum)
    return model


def _set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """One BatchNorm momentum for the whole model (model.bn_momentum).

    Some torchvision models set their own, for ImageNet-length schedules: MobileNetV3 uses 0.01,
    MNASNet 0.0003. After one epoch of Fashion-MNIST (375 steps) such running statistics
    still lag the weights so far that MobileNetV3-Small evaluated at chance (0.10) while it
    scored 0.84 in training; recomputed statistics gave 0.85.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d by one with `in_channels` inputs and otherwise equal settings."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups if child.groups == 1 else in_channels,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, name, new)
                return
    raise UserError(
        "the model has no Conv2d layer to adapt to the data's channels",
        fix="use data.channels=3 or a model that takes your channel count",
    )


def build_user_model(spec: ModelSpec) -> nn.Module:
    """`package.module:function`; the function gets the keyword arguments it declares among
    in_channels, num_classes, image_size."""
    module_name, _, attr = spec.name.partition(":")
    where = f"config key model.name = {spec.name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module '{module_name}': {exc}",
            where=where,
            fix="check the spelling and that the module is on PYTHONPATH",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(
            f"module '{module_name}' has no function '{attr}'",
            where=where,
            fix="write model=package.module:function with a function that returns an nn.Module",
        )
    offered = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "image_size": spec.image_size}
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in offered.items() if takes_any or k in params}
    try:
        model = fn(**given)
    except Exception as exc:  # the user's code: any error means it cannot build a model from these arguments
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"'{spec.name}' failed when called with {given or 'no arguments'}: {type(exc).__name__}: {first}",
            where=where,
            fix="the function may take in_channels, num_classes and image_size (by those names) and "
            "must return an nn.Module; run with --debug for the traceback",
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"'{spec.name}' returned {type(model).__name__}, not a torch.nn.Module", where=where)
    return model
