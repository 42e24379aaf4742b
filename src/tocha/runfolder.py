"""The run folder: the product's memory. Creation rules, JSON/metrics writers, reading a run back."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from tocha import folders
from tocha.errors import UserError
from tocha.folders import RunLock, held_lock, lock_run_dir  # noqa: F401 - writers lock through the run folder

CONFIG, ENV, META, METRICS, METRICS_CSV, SUMMARY, REPORT = (
    "config.yaml",
    "env.json",
    "meta.json",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "report.html",
)
BEST_WEIGHTS, LAST_WEIGHTS = "checkpoints/best.safetensors", "checkpoints/last.safetensors"


def default_run_name(data: str, model: str) -> str:
    safe_model = model.replace(":", "-").replace(".", "-").replace("/", "-")
    return f"runs/{data}-{safe_model}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(out: str, *, overwrite: bool) -> Path:
    """Create and lock the run folder; refuse an existing non-empty one unless `overwrite`; check it is writable.

    The lock comes first, so no other process is writing the folder while an overwrite cleans it. An
    overwrite removes only what tocha wrote (folders.RUN_LAYOUT: the earlier run's checkpoints,
    weights, metrics, summary, report, TensorBoard, ...): the new run starts clean, and files tocha
    did not write stay. A non-empty folder that tocha did not write is refused, overwrite or not.
    """
    path = Path(out)
    lock_run_dir(path)
    folders.prepare(
        path, "run", overwrite=overwrite, where="config key out", label="run folder", overwrite_flag="overwrite=true"
    )
    probe = path / ".tocha-write-test"
    try:
        (path / "checkpoints").mkdir(exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        probe.unlink(missing_ok=True)
        full = folders.write_failure(exc, probe)
        raise UserError(
            full if full.startswith("no space left") else f"cannot write the run folder '{out}': {exc.strerror or exc}",
            where="config key out",
            fix="choose a writable location with out=PATH",
        ) from None
    return path


# ---------------------------------------------------------------- one writer per run folder


def write_json(path: Path, data: Any) -> None:
    from tocha.engine.checkpoint import write_text_atomic

    write_text_atomic(path, json_text(data))


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def write_json_if_possible(path: Path, data: Any) -> str | None:
    """Write `path` as write_json does; on a read-only folder, lost permission or a full disk return
    why it was not written instead (a reader such as `tocha eval` still has its numbers to show)."""
    try:
        write_json(path, data)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{path}' is missing", fix="pass a run folder written by 'tocha train'") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"'{path}' is not valid JSON (line {exc.lineno}): the run folder is damaged", fix="re-run 'tocha train'"
        ) from None


def read_meta(run_dir: Path) -> dict:
    """RUN/meta.json, or one clear error when it is damaged: not an object, or without a model description
    (every task writes one), so that no reader fails later with a KeyError or TypeError."""
    meta = read_json(Path(run_dir) / META)
    problem = None
    if not isinstance(meta, dict):
        problem = "it is not a JSON object"
    elif not isinstance(meta.get("model"), dict) or not isinstance(meta["model"].get("name"), str):
        problem = "it has no model description"
    if problem:
        raise UserError(
            f"meta.json of {run_dir} is damaged: {problem}", fix="re-export or retrain the run (tocha train)"
        )
    return meta


class MetricsLog:
    """metrics.jsonl (appended and flushed per record), metrics.csv and TensorBoard events."""

    def __init__(self, run_dir: Path, *, csv_enabled: bool, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.records: list[dict] = []
        self.jsonl = open(run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.csv_enabled = csv_enabled
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            kind = record["kind"]
            for key, value in record.items():
                # An eval row repeats the running train metrics of the last log row: TensorBoard has them.
                repeated = kind == "eval" and (key.startswith("train.") or key == "lr")
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and not repeated:
                    named = key.startswith(("train.", "val.", "test.")) or key == "lr"
                    self.tb.add_scalar(key if named else f"{kind}/{key}", value, record["step"])
        if self.csv_enabled and record["kind"] == "eval":
            self._write_csv()

    def _write_csv(self) -> None:
        from tocha.engine.checkpoint import write_text_atomic

        columns: list[str] = []
        for record in self.records:
            columns += [k for k in record if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.records)
        write_text_atomic(self.run_dir / METRICS_CSV, buffer.getvalue())

    def restart(self, history: list[dict]) -> None:
        """After a resume: the metrics files hold exactly `history` (records after the checkpoint go)."""
        from tocha.engine.checkpoint import write_text_atomic

        self.jsonl.close()
        write_text_atomic(self.run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        self.jsonl = open(self.run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.records = list(history)
        if self.csv_enabled and self.records:
            self._write_csv()

    def close(self) -> None:
        """Close the files; after a failed write (a full disk) that failure was already reported, and
        flushing the same buffered record again must not replace that message with a traceback."""
        try:
            self.jsonl.close()
        except OSError:
            pass
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError:
                pass


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def resume_command(run_dir: str | Path) -> str:
    """The command that continues `run_dir`: `tocha distill --resume` for a distilled student (its teacher
    and loss are part of the run), `tocha train --resume` for every other run."""
    try:
        distilled = "distilled_from" in json.loads((Path(run_dir) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        distilled = False
    return f"tocha {'distill' if distilled else 'train'} --resume {run_dir}"


def check_run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist", fix="pass a folder written by 'tocha train'")
    for name in (CONFIG, META):
        if not (path / name).is_file():
            raise UserError(
                f"'{run_dir}' is not a tocha run folder: {name} is missing",
                fix="pass a folder written by 'tocha train' (it has config.yaml and meta.json)",
            )
    return path


def git_sha() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=os.getcwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
