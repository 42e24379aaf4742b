"""Progress display: a tqdm bar on a terminal, one plain line per epoch anywhere else.

Logs, CI and `nohup` get no carriage returns: a bar redrawn into a file is unreadable.
"""

from __future__ import annotations

import sys
from typing import TextIO


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


class Progress:
    def __init__(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.bar = None

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        """`done`: steps of this epoch already taken before a resume."""
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.steps_per_epoch,
                initial=done,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
            )

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, record: dict) -> None:
        """A log-interval read of the running metrics: shown in the bar only (a plain log stays per-epoch)."""
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt(record), refresh=False)

    def end_epoch(self, epoch: int, record: dict, seconds: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt(record))
            self.bar.close()
            self.bar = None
        else:
            print(f"epoch {epoch + 1}/{self.epochs}  {_fmt(record)}  {seconds:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
