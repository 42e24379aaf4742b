"""`tocha train --nproc N`: start N copies of `python -m tocha train ...` through torchrun's own launcher.

This is `torchrun --standalone --nproc-per-node N -m tocha train ...` called as a function
(torch.distributed.launcher.api.elastic_launch): the same rendezvous, environment and process
supervision, no launcher of tocha's own. When a rank fails, torchrun stops the others; the
message names the rank that failed first and its error.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from tocha.errors import UserError

EXIT_USER_ERROR = 2


def check_nproc(nproc: int, device: str) -> None:
    """A process count this machine can run; raises UserError otherwise."""
    if nproc < 1:
        raise UserError(
            f"--nproc {nproc} is not a process count",
            where="tocha train --nproc",
            allowed="a whole number >= 1",
            fix="e.g. --nproc 2",
        )
    if os.environ.get("WORLD_SIZE") or os.environ.get("TORCHELASTIC_RUN_ID"):
        raise UserError(
            "--nproc was given to a process that torchrun already started",
            where="tocha train --nproc",
            fix="either launch with torchrun --nproc-per-node N -m tocha train ..., or run "
            "tocha train --nproc N yourself, not both",
        )
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        if nproc > count:
            raise UserError(
                f"--nproc {nproc} but this machine has {count} CUDA device(s)",
                where="tocha train --nproc",
                allowed=f"1 to {count} (one process per GPU)",
                fix=f"use --nproc {count}, or device=cpu to run processes on the CPU",
            )
    else:
        from tocha.hardware import usable_cpus

        cpus = usable_cpus()
        if nproc > cpus:
            raise UserError(
                f"--nproc {nproc} but only {cpus} CPU core(s) are usable: the processes would "
                "take turns on the cores and every collective would wait",
                where="tocha train --nproc",
                allowed=f"1 to {cpus} on this CPU",
                fix=f"use --nproc {cpus} or fewer",
            )


def launch(nproc: int, train_args: list[str], *, debug: bool) -> int:
    """Run `tocha train train_args` on `nproc` local processes; the exit code for the CLI."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's own INFO/WARNING lines (rendezvous, worker groups) are noise unless debugging.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.INFO if debug else logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"tocha-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    args = ["-m", "tocha", *(["--debug"] if debug else []), "train", *train_args]
    try:
        elastic_launch(config, entrypoint=sys.executable)(*args)
    except ChildFailedError as exc:
        return _report(exc, nproc)
    except SignalException as exc:
        # torchrun passed the signal on: the ranks agreed on a step, rank 0 checkpointed and said how to resume.
        return 128 + int(exc.sigval)
    return 0


def _message(failure) -> str:
    data = failure.message
    return str(data.get("message", "")) if isinstance(data, dict) else str(data or "")


def _secondary(failure) -> bool:
    data = failure.error_file_data.get("message") if isinstance(failure.error_file_data, dict) else None
    return isinstance(data, dict) and bool(data.get("extraInfo", {}).get("tocha_secondary"))


def _report(exc, nproc: int) -> int:
    """Exit code and one message for failed ranks: the user error they all printed, or the root cause."""
    failures = exc.failures
    if {f.exitcode for f in failures.values()} == {EXIT_USER_ERROR}:
        return EXIT_USER_ERROR  # rank 0 printed the message; the others said the same and stayed quiet

    def weight(rank: int) -> tuple:
        f = failures[rank]
        # A rank's own error first, then one that names another rank's error, then a bare exit.
        return (f.error_file == "<N/A>", _secondary(f), f.timestamp, rank)

    rank = min(failures, key=weight)
    failure = failures[rank]
    how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {-failure.exitcode}"
    detail = _message(failure) if failure.error_file != "<N/A>" else "no error message (see its output above)"
    if _secondary(failure):
        print(f"tocha train: error: {detail}", file=sys.stderr)
    else:
        print(f"tocha train: error: rank {rank} of {nproc} failed ({how}): {detail}", file=sys.stderr)
    return 1


def write_error_file(text: str, *, secondary: bool) -> None:
    """Leave `text` where torchrun looks for a worker's error (TORCHELASTIC_ERROR_FILE), in the JSON
    layout its @record decorator writes; `secondary` marks an error caused by another rank's failure."""
    import json
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {
        "message": {"message": text, "extraInfo": {"timestamp": str(int(time.time())), "tocha_secondary": secondary}}
    }
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:
        pass
