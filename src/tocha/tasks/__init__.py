"""The task registry: the one dispatch on `task=` (CLI, API, config defaults, --help, refusals).

An entry is light (no torch import: `tocha --help` and config validation read it); the task itself
lives in its module and is created by :func:`create`. Adding a task is one module and one entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLASS_AVERAGES = ("precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted", "f1_weighted")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    help: str
    module: str  # tocha.tasks.<name>, holding `Task`
    metrics: Callable[[Any], tuple[str, ...]]  # names `val.<name>` can take, given the config
    defaults: dict[str, Any] = field(default_factory=dict)  # config defaults (TASK DEFAULTS in --help)
    data: tuple[str, ...] | None = None  # the data names it learns from (None: any image/tabular data)
    one_process: bool = False  # refuses --nproc / torchrun
    infers: str = "predict"  # the command that uses its runs: predict or generate
    noun: str = "model"  # what a run of it is, for messages
    own_keys: frozenset[str] = frozenset()  # config keys only this task reads (the report hides them elsewhere)
    data_keys: frozenset[str] | None = None  # the data.* keys it reads (None: all)


def _classify_metrics(cfg) -> tuple[str, ...]:
    top = (f"top{cfg.top_k}_accuracy",) if cfg.top_k > 1 else ()
    return ("loss", "accuracy", *top, *CLASS_AVERAGES, "roc_auc", "pr_auc")


TASKS: dict[str, TaskInfo] = {
    "classify": TaskInfo(
        "classify",
        "images or feature tables into classes",
        "tocha.tasks.classify",
        _classify_metrics,
        noun="classifier",
        own_keys=frozenset({"label_smoothing", "top_k", "image_size", "lr_backbone", "unfreeze_at_epoch"}),
    ),
    # Many small steps: one epoch of the fortunes text (2.3M characters) is 1,133 steps of 32 x 64 characters.
    # Two epochs are what meet the targets (bpc 22% under the 3-gram, 85% real words): BENCHMARKS.md.
    "charlm": TaskInfo(
        "charlm",
        "a character-level language model of a text",
        "tocha.tasks.charlm",
        lambda cfg: ("loss", "bpc", "perplexity", "accuracy"),
        defaults={
            "data.name": "text",
            "data.val_fraction": 0.1,
            "model.name": "lstm",
            "model.hidden": [256],
            "model.layers": 1,
            "model.dropout": 0.0,
            "seq_len": 64,
            "epochs": 2,
            "batch_size": 32,
            "lr": 5e-3,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "monitor": "val.bpc",
            "log_every": 50,
            "top_k": 1,
        },
        data=("text",),
        one_process=True,
        infers="generate",
        noun="character language model",
        own_keys=frozenset({"seq_len", "tbptt", "sample_chars"}),
        data_keys=frozenset({"name", "path", "val_fraction", "workers"}),
    ),
    "regress": TaskInfo(
        "regress",
        "a number from a row of numeric features: MSE or Huber loss, MAE, RMSE and R2",
        "tocha.tasks.regress",
        lambda cfg: ("loss", "mae", "rmse", "r2"),
        # Measured on load_diabetes (benchmarks/regress_diabetes.py): constant lr, the best epoch kept.
        defaults={
            "data.name": "csv",
            "model.name": "mlp",
            "model.hidden": [64, 32],
            "monitor": "val.rmse",
            "epochs": 100,
            "batch_size": 64,
            "lr": 1e-3,
            "weight_decay": 1e-2,
            "scheduler": "none",
            "log_every": 10,
        },
        data=("csv",),
        one_process=True,
        noun="regression model",
        own_keys=frozenset({"loss"}),
        data_keys=frozenset({"name", "path", "target", "val_fraction", "workers", "resident"}),
    ),
}


def info(name: str) -> TaskInfo:
    return TASKS[name]


def create(name: str, **options):
    """The task object for `name`; `options` are the task's own (a teacher, a pruned model's spec)."""
    return importlib.import_module(TASKS[name].module).Task(**options)


def task_of_meta(meta: dict) -> str:
    """The task a finished run folder was trained for (runs before tasks existed are classifiers)."""
    task = meta.get("task", "classify") if isinstance(meta, dict) else "classify"
    return task if task in TASKS else "classify"
