"""Stop signals and the errors a training run ends with (a diverged loss, a SIGTERM)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from tocha import runfolder as rf
from tocha.engine import resume
from tocha.engine.loop import NonFiniteLoss, StopRequested
from tocha.errors import UserError

log = logging.getLogger("tocha")


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, signum: int, step: int, run_dir: Path | None, world_size: int = 1) -> None:
        name = signal.Signals(signum).name
        more = f" --nproc {world_size} (or through torchrun as before)" if world_size > 1 else ""
        where = f"; checkpoint written, continue with: {rf.resume_command(run_dir)}{more}" if run_dir else ""
        super().__init__(f"{name} at step {step}{where}")
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM ask the loop to finish its step and checkpoint; a second SIGINT stops at once."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce  # ranks other than 0 stop silently
        self.previous: dict = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # SIGINT again: the user means it
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            log.warning(
                "received %s: finishing this step and writing a checkpoint (Ctrl-C again to quit now)",
                signal.Signals(signum).name,
            )

    def pending(self) -> int | None:
        return self.signum

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def nonfinite_error(exc: NonFiniteLoss, run_dir: Path | None, lr: float) -> UserError:
    kept = ""
    if run_dir is not None:
        newest = resume.all_checkpoints(run_dir / "checkpoints")
        kept = f"; the last good checkpoint is kept ({newest[0]})" if newest else ""
    return UserError(
        f"the training loss became NaN or Inf between step {exc.last_good} and step {exc.step}{kept}",
        where="training",
        fix=f"lower the learning rate (lr={lr:g} now), add grad_clip=1.0, use precision=bf16 "
        "instead of fp16, or on_nonfinite=skip to drop such batches",
    )


@contextlib.contextmanager
def training_guard(run_dir: Path | None, lr: float, signals: StopSignals | None, world_size: int = 1) -> Iterator[None]:
    """Around the loop: a diverged loss or a stop signal becomes the user-facing error."""
    try:
        yield
    except NonFiniteLoss as exc:
        raise nonfinite_error(exc, run_dir, lr) from None
    except StopRequested as exc:
        raise Interrupted(exc.signum, exc.step, run_dir, world_size) from None
