"""Progress display: a tqdm bar on a terminal (or in a notebook), plain lines anywhere else.

Logs, CI and `nohup` get no carriage returns: a bar redrawn into a file is unreadable. A plain log
gets one line per epoch, and within a long epoch a line at least every 30 s or every 10% of it,
whichever comes first (an epoch shorter than 30 s prints only its end).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

SHORT = {  # the bar's names: it must fit a 100-column terminal
    "train.loss": "loss",
    "train.accuracy": "acc",
    "val.loss": "val.loss",
    "val.accuracy": "val.acc",
    "val.bpc": "val.bpc",
    "val.rmse": "val.rmse",
}
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
BAR_MIN = 10  # columns the bar itself keeps


def in_notebook() -> bool:
    """Running inside a Jupyter/IPython kernel (not a terminal IPython)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _fmt(record: dict) -> str:
    parts = []
    for key in ("train.loss", "train.accuracy", "val.loss", "val.accuracy", "val.bpc", "val.rmse", "lr"):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.3g}" if key == "lr" else f"{key} {value:.4f}")
    speed = record.get("samples_per_second", record.get("train_samples_per_second"))
    if speed is not None:
        parts.append(f"{speed:,.0f} samples/s")
    if record.get("data_wait_share"):  # only the DataLoader path waits
        parts.append(f"data wait {record['data_wait_share']:.0%}")
    return "  ".join(parts)


def _speed(value: float) -> str:
    return f"{value / 1000:.1f}k/s" if value >= 10_000 else f"{value:,.0f}/s"


def short_postfix(record: dict, width: int) -> str:
    """The bar's metrics in at most `width` characters: loss, accuracy and speed first, the rest if room."""
    speed = record.get("samples_per_second", record.get("train_samples_per_second"))
    wanted = [f"{SHORT[k]} {record[k]:.4f}" for k in ("train.loss", "train.accuracy") if k in record]
    if speed is not None:
        wanted.append(_speed(speed))
    wanted += [
        f"{SHORT[k]} {record[k]:.4f}" for k in ("val.accuracy", "val.bpc", "val.rmse", "val.loss") if k in record
    ]
    kept: list[str] = []
    for part in wanted:  # in order of importance: the first that does not fit ends the list
        if len(", " + " ".join([*kept, part])) > width:
            break
        kept.append(part)
    return ", " + " ".join(kept) if kept else ""


class Progress:
    def __init__(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        tty: bool | None = None,
        line_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.notebook = tty is None and in_notebook()
        self.tty = self.notebook or (self.stream.isatty() if tty is None else tty)
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.line_seconds, self.clock = line_seconds, clock
        self.bar = None
        self.done = 0
        self.epoch = 0
        self.epoch_start = self.last_line = 0.0
        self.last_line_done = 0

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        """`done`: steps of this epoch already taken before a resume."""
        self.epoch, self.done, self.last_line_done = epoch, done, done
        self.epoch_start = self.last_line = self.clock()
        if self.enabled and self.tty:
            if self.notebook:
                from tqdm.auto import tqdm  # the widget bar where ipywidgets is installed
            else:
                from tqdm import tqdm

            self.bar = tqdm(
                total=self.steps_per_epoch,
                initial=done,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                file=None if self.notebook else self.stream,
                leave=True,
                dynamic_ncols=not self.notebook,
                bar_format=None if self.notebook else BAR_FORMAT,
            )

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)

    def postfix(self, record: dict) -> str:
        if self.notebook:
            return ", " + _fmt(record)
        columns = self.bar.ncols or shutil.get_terminal_size((100, 24)).columns
        fixed = len(f"epoch {self.epoch + 1}/{self.epochs} 100%|| {self.steps_per_epoch}/{self.steps_per_epoch}")
        fixed += len(" [00:00:00<00:00:00]")
        return short_postfix(record, columns - fixed - BAR_MIN)

    def log(self, record: dict) -> None:
        """A log-interval read of the running metrics: in the bar, or as a line in a plain log when due."""
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(record)[2:], refresh=False)
            return
        if not self.enabled or not self.steps_per_epoch or self.done >= self.steps_per_epoch:
            return  # (the epoch's own line follows at its end)
        now = self.clock()
        elapsed, fraction = now - self.epoch_start, self.done / self.steps_per_epoch
        if fraction <= 0 or elapsed / fraction < self.line_seconds:
            return  # an epoch this short prints its end only
        since = (self.done - self.last_line_done) / self.steps_per_epoch
        if now - self.last_line >= self.line_seconds or since >= 0.1:
            self.last_line, self.last_line_done = now, self.done
            print(
                f"epoch {self.epoch + 1}/{self.epochs}  step {self.done}/{self.steps_per_epoch} "
                f"({fraction:.0%})  {_fmt(record)}  {elapsed:.1f}s",
                file=self.stream,
                flush=True,
            )

    def end_epoch(self, epoch: int, record: dict, seconds: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(record)[2:])
            self.bar.close()
            self.bar = None
        else:
            print(f"epoch {epoch + 1}/{self.epochs}  {_fmt(record)}  {seconds:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
