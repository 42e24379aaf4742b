"""What a task is: a small object the harness calls. It builds, it scores; it never writes files
and never owns a loop (the harness and the engine do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from tocha import runfolder as rf


@dataclass
class Built:
    """What a task hands the harness for one placement."""

    model: nn.Module  # on the placement's device, unwrapped
    batches: dict[str, Any]  # "train", and "val"/"test" when present
    meta: dict  # meta.json: what eval/predict/generate need
    loss_fn: Callable  # (logits, y) -> mean loss over the batch
    correct_fn: Callable | None  # (logits, y) -> (hits, targets scored), or None (regression)
    probe: tuple[Any, Any]  # one training batch on the device (thread measurement, compile)
    lines: list[str] = field(default_factory=list)  # log lines describing data and model
    resolved: dict[str, Any] = field(default_factory=dict)  # config values chosen for 'auto' (dotted keys)
    generators: dict = field(default_factory=dict)  # RNGs the checkpoint must carry (augmentation)
    weights_metadata: dict[str, str] | None = None  # stored in every .safetensors file
    lr_of: Callable[[str], float] | None = None  # per-parameter learning rate (transfer learning)
    placement: Any = None  # the placement, updated when the data decided (workers)
    run_name: tuple[str, str] = ("data", "model")  # for runs/<data>-<model>-<time>
    samples_unit: str = "samples"  # what the throughput counts
    probe_loss: Callable | None = None  # the loss on `probe` when the training targets differ (distillation)


@dataclass
class Finished:
    """A task's final word: what goes into summary.json, the report and extra files (the harness writes them)."""

    summary: dict  # val/test metrics and task-specific fields
    report: dict = field(default_factory=dict)  # keyword arguments of reports.html.write_report
    files: dict[str, str] = field(default_factory=dict)  # file name -> text
    jsons: dict[str, dict] = field(default_factory=dict)  # file name -> JSON value
    values: dict = field(default_factory=dict)  # for the Python result (val/test metrics objects)
    headline: list[str] = field(default_factory=list)  # what the CLI prints at the end (before the cost)


class Task(Protocol):
    name: str

    def build(self, cfg, placement, *, data=None, model: nn.Module | None = None) -> Built: ...

    def evaluate(self, built: Built, split: str) -> dict:
        """Flat metrics of `split` ("val.loss", "val.accuracy", ...) for the current weights."""
        ...

    # Optional: after_eval(built, record) -> {file name: text to append} after each evaluation.

    def finish(self, built: Built, cfg, summary: dict) -> Finished:
        """Final metrics with the best weights loaded: summary fields, report sections, files."""
        ...


def final_scores(scored: Callable, built: Built) -> tuple[dict, dict]:
    """`scored(built, split) -> (loss, metrics)` over the val and test splits there are: the summary
    fields ({"val": {"val.loss": ..., ...}}) and the metrics objects ({"val": ..., "test": ...})."""
    fields, values = {}, {"val": None, "test": None}
    for split in ("val", "test"):
        if split in built.batches:
            loss, metrics = scored(built, split)
            fields[split] = {f"{split}.loss": loss, **metrics.flat(split)}
            values[split] = metrics
    return fields, values


@dataclass(frozen=True)
class EvalResult:
    split: str
    loss: float
    metrics: Any  # the task's metrics (ClassificationMetrics, RegressionMetrics)
    checkpoint: str
    json_path: Path | None  # None when it was not written (write=False, or the folder is read-only)
    json_text: str = ""  # what eval-SPLIT.json holds, or would hold
    not_written: str | None = None  # why json_path could not be written (e.g. "Read-only file system")


def eval_result(json_path: Path, record: dict, write: bool, **fields) -> EvalResult:
    """The EvalResult, with RUN/eval-SPLIT.json written when asked and possible: a read-only run folder
    still gives its metrics, and says the file was not written."""
    not_written = rf.write_json_if_possible(json_path, record) if write else None
    written = json_path if write and not_written is None else None
    return EvalResult(**fields, json_path=written, json_text=rf.json_text(record), not_written=not_written)
