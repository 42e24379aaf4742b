"""Pruning that makes a model smaller and faster, and the seeds' mask pruning that does not.

Structured pruning (torch-pruning's dependency graph) removes whole channels: every layer that
reads a removed channel shrinks with it, so the result is a smaller dense network that any runtime
runs faster. The ratio is a target on MACs (or parameters), reached by searching the channel ratio
that gives it, since removing a share of channels removes a larger share of MACs (both sides of
a convolution shrink).

Mask pruning (`torch.nn.utils.prune`) zeroes weights but keeps every tensor's shape: the file
and the latency stay the same on every dense runtime. It is offered because the seeds teach it,
with a warning.

A pruned run folder records `"pruned"` in meta.json; `fit_to_shapes` resizes a freshly built
model to the checkpoint's tensor shapes before its weights are loaded, so no pickled modules are
needed to reload one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from tocha.errors import UserError

log = logging.getLogger("tocha")

METHODS = ("channels", "masks")
TARGETS = ("macs", "params")
SCOPES = ("uniform", "global")
MAX_LAYER_RATIO = 0.9  # never remove more than 90% of one layer's channels (a layer of 0 channels breaks the net)
SEARCH_STEPS = 10  # bisection steps on the channel ratio at most (precision 0.9 / 2^10)
ROUND_TO = 8  # keep channel counts multiples of 8: see prune_channels
CLOSE_ENOUGH = 0.005  # stop searching within 0.5% of the original MACs/parameters from the goal
MASKS_WARNING = (
    "mask pruning zeroes weights but keeps every tensor's shape: the model is NOT smaller or faster "
    "on CPU/GPU runtimes; use --prune-method channels (the default) for speed"
)


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates per sample of a forward pass on `example` (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops()) // (2 * example.shape[0])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    method: str
    target: str
    asked: float  # the asked reduction of the target (0.5 = half the MACs)
    achieved: float  # the reduction reached
    channel_ratio: float  # share of channels removed per layer (uniform) or overall (global)
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    masks: list = dataclasses.field(default_factory=list)  # (parameter, 0/1 mask) pairs of mask pruning

    def summary(self) -> str:
        return (
            f"{self.method} pruning: MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_before / max(self.macs_after, 1):.2f}x fewer), parameters {self.params_before:,} -> "
            f"{self.params_after:,}; asked -{self.asked:.0%} {self.target}, got -{self.achieved:.1%}"
        )


def output_layer(model: nn.Module) -> nn.Module:
    """The classifier: the last Linear (or Conv) layer, whose outputs are the classes and must stay."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise UserError("the model has no Linear or Conv2d layer to prune", where="tocha compress --prune")
    return layers[-1]


def _channel_prune(
    model: nn.Module, example: torch.Tensor, channel_ratio: float, scope: str, round_to: int | None
) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    if channel_ratio > 0:
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=channel_ratio,
            global_pruning=scope == "global",
            max_pruning_ratio=MAX_LAYER_RATIO,
            ignored_layers=[output_layer(pruned)],
            round_to=round_to if round_to and round_to > 1 else None,
        )
        pruner.step()
    return pruned


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    *,
    target: str = "macs",
    scope: str = "uniform",
    round_to: int | None = ROUND_TO,
) -> PruneResult:
    """Remove channels until `target` (MACs or parameters) is down by `ratio`; the closest ratio found wins.

    `round_to` keeps every pruned layer's channel count a multiple of 8: CPU kernels work in blocks
    of 8 channels (ONNX Runtime's NCHWc layout on AVX2), and a network pruned to 11 and 22 channels
    ran 1.8x SLOWER than the unpruned one in ONNX Runtime here, while the same pruning rounded to
    8 and 16 ran 2.3x faster. The price: the MAC ratio can only be hit as closely as whole blocks
    allow (`round_to=1` for exact counts).
    """
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise UserError(
            "structured pruning needs the torch-pruning package",
            where="tocha compress --prune",
            fix="pip install 'tocha[compress]' (or torch-pruning)",
        ) from None
    measure = count_macs if target == "macs" else (lambda m, _x: count_params(m))
    base = measure(model, example)
    goal = base * (1 - ratio)
    lo, hi = 0.0, MAX_LAYER_RATIO
    best: tuple[float, float, float, nn.Module] | None = None  # (distance to goal, value, channel ratio, model)
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        candidate = _channel_prune(model, example, mid, scope, round_to)
        value = measure(candidate, example)
        if best is None or abs(value - goal) < best[0]:
            best = (abs(value - goal), value, mid, candidate)
        if abs(value - goal) <= CLOSE_ENOUGH * base:
            break
        lo, hi = (mid, hi) if value > goal else (lo, mid)
    assert best is not None
    _, after, channel_ratio, pruned = best
    return PruneResult(
        pruned,
        "channels",
        target,
        ratio,
        1 - after / base,
        channel_ratio,
        count_macs(model, example),
        count_macs(pruned, example),
        count_params(model),
        count_params(pruned),
    )


def prune_masks(model: nn.Module, example: torch.Tensor, ratio: float) -> PruneResult:
    """Global L1 unstructured pruning, masks made permanent: zeros in tensors of unchanged shape."""
    from torch.nn.utils import prune

    log.warning("%s", MASKS_WARNING)
    pruned = copy.deepcopy(model)
    keep = output_layer(pruned)
    params = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not keep]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=ratio)
    for module, name in params:
        prune.remove(module, name)
    masks = [(m.weight, (m.weight != 0).float()) for m, _ in params]  # fine-tuning must keep the zeros
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    macs = count_macs(model, example)
    return PruneResult(
        pruned,
        "masks",
        "params",
        ratio,
        zeros / max(total, 1),
        ratio,
        macs,
        macs,
        count_params(model),
        count_params(pruned),
        masks,
    )


def check_options(ratio: float, method: str, target: str, scope: str) -> None:
    if not 0 < ratio < 1:
        raise UserError(
            f"prune ratio {ratio:g} is out of range",
            where="tocha compress --prune",
            allowed="a fraction between 0 and 1, e.g. 0.5 to remove half the MACs",
        )
    for value, allowed, where in (
        (method, METHODS, "--prune-method"),
        (target, TARGETS, "--prune-target"),
        (scope, SCOPES, "--prune-scope"),
    ):
        if value not in allowed:
            raise UserError(f"unknown value '{value}'", where=f"tocha compress {where}", allowed=", ".join(allowed))


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    *,
    method: str = "channels",
    target: str = "macs",
    scope: str = "uniform",
    round_to: int | None = ROUND_TO,
) -> PruneResult:
    check_options(ratio, method, target, scope)
    if method == "masks":
        return prune_masks(model, example, ratio)
    return prune_channels(model, example, ratio, target=target, scope=scope, round_to=round_to)


# ------------------------------------------------------------------ reloading a pruned checkpoint


def checkpoint_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes stored in a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def fit_to_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Resize `model`'s layers in place to the tensor shapes of a (channel-pruned) checkpoint."""
    for prefix, module in model.named_modules():
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        tensors = [(n, t, True) for n, t in module.named_parameters(recurse=False)]
        tensors += [(n, t, False) for n, t in module.named_buffers(recurse=False)]
        for name, tensor, is_param in tensors:
            want = shapes.get(f"{prefix}.{name}" if prefix else name)
            if tensor is None or want is None or tuple(tensor.shape) == want:
                continue
            fresh = torch.empty(want, dtype=tensor.dtype)
            if is_param:
                setattr(module, name, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
            else:
                module.register_buffer(name, fresh)
        if isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
            module.groups = module.out_channels if depthwise else module.groups
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = (module.running_mean if module.running_mean is not None else module.weight).shape[0]
    return model
