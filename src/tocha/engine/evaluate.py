"""Evaluation over a split: predictions gathered once, per-sample losses, exact over several ranks."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from tocha.engine.distributed import DistInfo, gather_for_metrics
from tocha.engine.step import AMP_DTYPES
from tocha.metrics.classification import ClassificationMetrics, classification_metrics


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    batches,
    *,
    device: torch.device,
    precision: str = "fp32",
    loss_fn: Callable | None = None,
    outputs: Callable = lambda logits: logits.softmax(dim=1),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run `model` over `batches`; return (outputs [N, ...] float32, targets [N], per-sample losses [N] or None).

    `outputs` turns logits into what is kept (class probabilities by default). `loss_fn(logits, y)`
    must return one loss per sample (reduction="none"): per-sample values can be gathered across
    ranks and averaged exactly once each. Everything stays on the device until one copy at the end.
    """
    amp_dtype = AMP_DTYPES[precision]
    was_training = model.training
    model.eval()
    kept, targets, losses = [], [], []
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            losses.append(loss_fn(logits, y).float())
        kept.append(outputs(logits))
        targets.append(y)
    model.train(was_training)
    if not kept:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), None
    per_sample = torch.cat(losses).cpu() if loss_fn is not None else None
    return torch.cat(kept).cpu(), torch.cat(targets).cpu(), per_sample


def evaluate_classifier(
    model: nn.Module,
    batches,
    *,
    classes,
    device,
    precision: str,
    top_k: int,
    dist: DistInfo = DistInfo(),
    n_samples: int | None = None,
) -> tuple[float, ClassificationMetrics]:
    """Loss and metrics over a split; on several ranks each predicts its shard and every rank gets the
    metrics of all `n_samples`, each counted once (the padding `shard` added is dropped)."""
    probs, labels, losses = predict_batches(
        model,
        batches,
        device=device,
        precision=precision,
        loss_fn=partial(nn.functional.cross_entropy, reduction="none"),
    )
    if dist.world_size > 1:
        probs, labels, losses = (gather_for_metrics(t, n_samples, dist, device) for t in (probs, labels, losses))
    loss = losses.double().mean().item() if losses is not None and len(losses) else float("nan")
    return loss, classification_metrics(labels, probs, classes, top_k=(top_k,))
