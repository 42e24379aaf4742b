"""Transfer learning: pretrained weights in, a new head, a frozen (then unfrozen) backbone.

- `load_pretrained`: a torchvision-format state dict, a safetensors file or a tocha run folder; the
  classifier head is left freshly initialised when it does not fit (or the run learned other classes),
  and a first convolution trained on another channel count is adapted (RGB -> gray: summed over the
  colour channels; gray -> RGB: repeated and divided by 3). Every such decision comes back as a note.
- `Freezing`: which parameters are frozen in which epoch (`model.freeze`, `unfreeze_at_epoch`), the
  learning rate of each parameter (`lr_backbone`), and BatchNorm layers held in eval mode while frozen.
  It is applied through the training batches' `set_epoch`, which the loop calls at every epoch start
  (and after a resume), so the loop needs no hook of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from tocha.errors import UserError

MIN_FITTING_SHARE = 0.5  # below this share of the model's tensors loaded, the file is another architecture


def head_name(model: nn.Module, *, required: bool = True) -> str | None:
    """The qualified name of the classifier head: the last Linear layer (resnet `fc`, cnn's last layer, ...)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None and required:
        raise UserError(
            "the model has no Linear classifier head to replace or to keep trainable",
            where="config keys model.weights, model.freeze",
            fix="use model.freeze=none, or a model whose last layer is nn.Linear",
        )
    return last


def resolve_weights_path(path: str | Path) -> tuple[Path, dict | None]:
    """(weights file, the run's meta.json or None): a run folder stands for its best checkpoint."""
    from tocha.paths import require_file_or_dir

    path = require_file_or_dir(
        path, "config key model.weights", expected="a weights file (.pt, .pth, .safetensors) or a tocha run folder"
    )
    if path.is_dir():
        from tocha import runfolder as rf

        rf.check_run_dir(path)
        best = path / rf.BEST_WEIGHTS
        if not best.is_file():
            raise UserError(
                f"run folder '{path}' has no best checkpoint ({rf.BEST_WEIGHTS})",
                where="config key model.weights",
                fix="train that run to its first evaluation first",
            )
        return best, rf.read_json(path / rf.META)  # only its class names are used
    return path, None


def _adapt_channels(tensor: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv kernel for `in_channels` inputs whose response to a gray image (all channels equal) is unchanged."""
    return tensor.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels


def load_pretrained(model: nn.Module, path: str | Path, *, classes: tuple[str, ...] | None = None) -> list[str]:
    """Load what fits of `path` into `model`; returns notes for the log. Errors on another architecture."""
    from tocha.engine.checkpoint import read_state_dict

    file, meta = resolve_weights_path(path)
    state = dict(read_state_dict(file))
    own = model.state_dict()
    notes = [f"from {file}"]
    head = head_name(model, required=False)
    in_head = (lambda k: k.startswith(head + ".")) if head else (lambda k: False)
    head_keys = [k for k in state if in_head(k)]
    if meta is not None and classes is not None and list(meta.get("classes", [])) != list(classes) and head_keys:
        for k in head_keys:
            state.pop(k)
        notes.append(
            f"head '{head}' newly initialised: that run learned other classes "
            f"({', '.join(map(str, meta.get('classes', [])[:5]))}...)"
        )
    for k, v in list(state.items()):
        mine = own.get(k)
        if (
            mine is not None
            and v.ndim == 4
            and mine.ndim == 4
            and v.shape[0] == mine.shape[0]
            and v.shape[2:] == mine.shape[2:]
            and v.shape[1] != mine.shape[1]
            and not in_head(k)
        ):
            state[k] = _adapt_channels(v, mine.shape[1])
            notes.append(
                f"'{k}' adapted from {v.shape[1]} to {mine.shape[1]} input channel(s) "
                f"({'summed over' if mine.shape[1] == 1 else 'spread across'} the channels)"
            )
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fits) < MIN_FITTING_SHARE * len(own):
        misfit = [
            f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ][:2] or [f"model has {k}, the file does not" for k in own if k not in state][:2]
        what = "no tensor" if not fits else f"only {len(fits)} of the model's {len(own)} tensors"
        raise UserError(
            f"{what} in '{file}' fits the model; it was saved from another architecture (e.g. {'; '.join(misfit)})",
            where="config key model.weights",
            fix="pass weights saved from the same model name (model.name), or a tocha run folder trained with it",
        )
    model.load_state_dict(fits, strict=False)
    skipped_head = [k for k in own if in_head(k) and k not in fits]
    if skipped_head and not any("newly initialised" in n for n in notes):
        notes.append(
            f"head '{head}' newly initialised for {own[skipped_head[0]].shape[0]} classes (the file's "
            "head does not fit)"
        )
    others = [k for k in own if k not in fits and not in_head(k)]
    if others:
        notes.append(f"{len(others)} other tensor(s) not in the file kept their initial values (e.g. {others[0]})")
    notes.append(f"{len(fits)} of {len(own)} tensors loaded")
    return notes


class Freezing:
    """Frozen parameter prefixes, the epoch they thaw at, and a learning rate per parameter."""

    def __init__(
        self, model: nn.Module, freeze: list[str], unfreeze_at_epoch: int = 0, *, pretrained: bool = False
    ) -> None:
        self.model, self.unfreeze_at_epoch, self.pretrained = model, unfreeze_at_epoch, pretrained
        names = [n for n, _ in model.named_parameters()]
        self.head = head_name(model) if freeze else head_name(model, required=False) if pretrained else None
        if freeze == ["backbone"]:
            self.prefixes = tuple(sorted({n.split(".")[0] for n in names if not n.startswith(self.head + ".")}))
            self.frozen_names = {n for n in names if not n.startswith(self.head + ".")}
        else:
            unknown = [p for p in freeze if not any(n == p or n.startswith(p + ".") for n in names)]
            if unknown:
                from tocha.errors import did_you_mean

                tops = sorted({n.rsplit(".", 1)[0] for n in names})
                raise UserError(
                    f"model.freeze names {unknown[0]!r}, which is no module of this model",
                    where="config key model.freeze",
                    allowed="backbone, none, or module prefixes such as " + ", ".join(tops[:6]),
                    fix=did_you_mean(unknown[0], tops) or None,
                )
            self.prefixes = tuple(freeze)
            self.frozen_names = {n for n in names if any(n == p or n.startswith(p + ".") for p in freeze)}
        self._bn_hooks: list = []
        self.frozen = False

    @property
    def active(self) -> bool:
        return bool(self.frozen_names)

    def backbone_lr(self, lr: float, lr_backbone: float | str) -> float:
        """lr_backbone=auto: lr / 10 for pretrained weights (they need small steps), otherwise lr."""
        if lr_backbone != "auto":
            return float(lr_backbone)
        return lr / 10 if self.pretrained else lr

    def lr_of(self, lr: float, lr_backbone: float) -> Callable[[str], float] | None:
        """Discriminative rates: the head at `lr`, the backbone at `lr_backbone`; None when all share `lr`
        and nothing is frozen (the optimizer's plain grouping)."""
        if self.head is None or (lr_backbone == lr and not self.active):
            return None
        return lambda name: lr if name.startswith(self.head + ".") else lr_backbone

    def set_epoch(self, epoch: int) -> None:
        """Frozen while epoch (counted from 1) < unfreeze_at_epoch, or always when unfreeze_at_epoch is 0."""
        frozen = self.active and (self.unfreeze_at_epoch == 0 or epoch + 1 < self.unfreeze_at_epoch)
        if frozen == self.frozen:
            return
        self.frozen = frozen
        for name, p in self.model.named_parameters():
            if name in self.frozen_names:
                p.requires_grad_(not frozen)
        for h in self._bn_hooks:
            h.remove()
        self._bn_hooks = []
        for m in self.model.modules():  # thawed BatchNorm follows the model's mode again
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(self.model.training)
        if frozen:  # frozen BatchNorm keeps its running statistics: eval mode whatever model.train() says
            for name, m in self.model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(
                    name == p or name.startswith(p + ".") for p in self.prefixes
                ):
                    self._bn_hooks.append(m.register_forward_pre_hook(_eval_mode))

    def describe(self) -> str:
        when = "for the whole run" if self.unfreeze_at_epoch == 0 else f"until epoch {self.unfreeze_at_epoch}"
        n = sum(p.numel() for name, p in self.model.named_parameters() if name in self.frozen_names)
        return f"frozen {when}: {', '.join(self.prefixes[:8])} ({n:,} parameters; BatchNorm in eval mode)"

    def wrap(self, batches) -> FreezingBatches:
        return FreezingBatches(batches, self)


def _eval_mode(module: nn.Module, args) -> None:
    module.training = False


class FreezingBatches:
    """The training batches, unchanged, with the freezing state set whenever the loop starts an epoch."""

    def __init__(self, batches, freezing: Freezing) -> None:
        self.batches, self.freezing = batches, freezing

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.freezing.set_epoch(epoch)
        self.batches.set_epoch(epoch, first_batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        return iter(self.batches)

    def __getattr__(self, name: str):
        return getattr(self.batches, name)  # wait_seconds and the like
