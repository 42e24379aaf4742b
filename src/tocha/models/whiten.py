"""A whitened first convolution (airbench's trick): its filters are the principal directions of the
training images' patches, scaled to unit variance, in both signs, and they stay fixed.

The eigenvectors of the covariance of all k x k patches (over C channels: C*k*k dimensions) are the
directions along which the images vary most; a filter v / sqrt(lambda + eps) responds to its
direction with unit variance, so the next layers start from decorrelated inputs. Both signs (v and
-v) keep the information a ReLU would cut. The layer is frozen: it is a fixed change of basis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SAMPLES = 5000  # images whose patches estimate the covariance
EPS = 5e-4  # added to the eigenvalues: a flat direction is not blown up


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def whiten_first_conv(model: nn.Module, images: torch.Tensor) -> str:
    """Set `model`'s first Conv2d to the whitening filters of `images` (normalised [N, C, H, W]) and
    freeze its weight; returns a line for the log. Filters beyond 2 * C*k*k keep their random
    initialisation, fixed too (one weight tensor is trained or not)."""
    conv = first_conv(model)
    if conv is None or conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError("model.whiten needs a model whose first layer is a plain square Conv2d")
    k, c_in, c_out = conv.kernel_size[0], conv.in_channels, conv.out_channels
    x = images[:PATCH_SAMPLES].float()
    patches = F.unfold(x, k).transpose(1, 2).reshape(-1, c_in * k * k)  # [N * L, C*k*k]
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())  # ascending
    order = torch.arange(len(eigenvalues) - 1, -1, -1)  # strongest direction first
    filters = (eigenvectors[:, order] / (eigenvalues[order] + EPS).sqrt()).T.float()
    n = min(c_out // 2, len(filters))
    weight = conv.weight.detach().clone()
    shaped = filters[:n].reshape(n, c_in, k, k)
    weight[:n], weight[n : 2 * n] = shaped, -shaped
    with torch.no_grad():
        conv.weight.copy_(weight)
    conv.weight.requires_grad_(False)
    kept = f", {c_out - 2 * n} more fixed at their random start" if c_out > 2 * n else ""
    return f"first conv whitened from {len(x):,} images' {k}x{k} patches: {2 * n} fixed filters (both signs){kept}"
