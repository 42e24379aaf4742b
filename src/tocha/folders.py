"""Folders tocha writes (run, compress, export): which files are tocha's, and what an overwrite may remove.

Every folder tocha creates gets a marker, `.tocha` (JSON: {"kind": "run" | "compress" | "export"}).
An overwrite removes only tocha's own names for that kind of folder (the layouts below); any other
file in it survives. A non-empty folder without the marker was not written by tocha and is refused,
even with an overwrite flag: tocha cannot tell its files from yours there. Run and compress folders
written before the marker existed are recognised by their contents (meta.json + config.yaml, or
compress.json).

Nothing here imports torch: `tocha --help` and the refusals stay fast.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
from pathlib import Path

from tocha.errors import UserError

MARKER, LOCK = ".tocha", ".tocha.lock"
KINDS = ("run", "compress", "export")
WHOLE = True  # a layout entry removed as a whole (a file, or a folder only tocha writes into)
_TMP = ".*.tmp"  # engine/checkpoint.atomic_path's temporaries of a killed process

# name pattern -> WHOLE, a nested layout (cleaned inside, removed when empty), or the kind of a
# nested tocha folder (cleaned by its own kind when it is tocha's).
RUN_LAYOUT: dict = {
    **dict.fromkeys(
        (
            "config.yaml",
            "env.json",
            "meta.json",
            "metrics.jsonl",
            "metrics.csv",
            "summary.json",
            "report.html",
            "curves.png",
            "confusion_matrix.png",
            "eval-*.json",
            "samples.txt",
            "sample-final.txt",
            "prune.json",
            "bench.json",
            ".tocha-write-test",
            _TMP,
        ),
        WHOLE,
    ),
    "checkpoints": dict.fromkeys(("best.safetensors", "last.safetensors", "step-*", ".step-*", _TMP), WHOLE),
    "tensorboard": dict.fromkeys(("events.out.tfevents.*",), WHOLE),
    # derived from the old weights: stale after an overwrite
    "export": "export",
    "compressed": "compress",
}
COMPRESS_LAYOUT: dict = {
    **dict.fromkeys(
        (
            "compress.json",
            "model.onnx",
            "model-*.onnx",
            "model*.onnx.parity.json",
            "model*.onnx.eval-*.json",
            "*.prep.onnx",
            "tradeoff.png",
            ".model-*.tmp-*",
            ".tocha-int8-*",  # deploy/fallback and steps' scratch folders of a killed process
            _TMP,
        ),
        WHOLE,
    ),
    "probes": dict.fromkeys(("pruned-*.onnx",), WHOLE),  # the goal search's pruning probes
    "pruned": "run",
    "pruned-*": "run",  # the goal search's fine-tuned candidates
}


def contents(path: Path) -> list[str]:
    """Names in `path`, marker and lock file aside (a folder holding only those counts as empty)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name not in (MARKER, LOCK))


def kind_of(path: Path) -> str | None:
    """The kind of tocha folder `path` is, or None when tocha did not write it."""
    try:
        kind = json.loads((path / MARKER).read_text(encoding="utf-8")).get("kind")
        return kind if kind in KINDS else None
    except (OSError, ValueError, AttributeError):
        pass
    try:  # written before the marker existed
        if (path / "config.yaml").is_file() and "model" in json.loads((path / "meta.json").read_text("utf-8")):
            return "run"
        if "steps" in json.loads((path / "compress.json").read_text(encoding="utf-8")):
            return "compress"
    except (OSError, ValueError, TypeError):
        pass
    return None


def mark(path: Path, kind: str) -> None:
    """Write the marker saying `path` is a tocha folder of `kind` (atomically: rename over)."""
    tmp = path / f"{MARKER}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps({"kind": kind, "written_by": "tocha"}) + "\n", encoding="utf-8")
        os.replace(tmp, path / MARKER)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fix = "free disk space there, or choose another output"
        raise UserError(write_failure(exc, path / MARKER), fix=fix) from None


def write_failure(exc: BaseException, file: Path) -> str:
    """What a failed write says: 'no space left on MOUNT while writing FILE' for a full disk (or quota),
    else 'cannot write FILE: reason'. MOUNT is where the file system is mounted ('/', '/scratch')."""
    text = str(exc).lower()
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "quota" in text:
        return f"no space left on {mount_point(file)} while writing {file}"
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot write {file}: {reason}"


def mount_point(path: Path) -> str:
    here = Path(os.path.abspath(path))
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return str(here)


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def refuse_foreign(path: Path, kind: str, *, where: str, label: str) -> None:
    """Refuse a non-empty folder that is not a tocha folder of `kind`: nothing there is ours to replace."""
    if not path.is_dir():
        return
    names = contents(path)
    if not names:
        return
    found = kind_of(path)
    if found == kind:
        return
    if found is None:
        raise UserError(
            f"{label} '{path}' is not empty and was not written by tocha (it holds {_listing(names)}); "
            "tocha writes only into new, empty or its own folders, with or without overwrite",
            where=where,
            fix="choose a new or empty folder",
        )
    raise UserError(
        f"{label} '{path}' is a tocha {found} folder, not a {kind} folder",
        where=where,
        fix="choose a new or empty folder",
    )


def prepare(path: Path, kind: str, *, overwrite: bool, where: str, label: str, overwrite_flag: str) -> Path:
    """Create `path` as a tocha folder of `kind`. An existing non-empty one must be tocha's and `overwrite`
    given; then tocha's own files of the earlier contents are removed and any other file is kept."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} '{path}' exists and is not a folder", where=where, fix="choose another folder")
    refuse_foreign(path, kind, where=where, label=label)
    if contents(path):
        if not overwrite:
            raise UserError(
                f"{label} '{path}' already exists and is not empty",
                where=where,
                fix=f"choose another folder, or pass {overwrite_flag} to replace the files tocha wrote "
                "there (files tocha did not write are kept)",
            )
        clean(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    mark(path, kind)
    return path


def clean(path: Path, kind: str) -> list[str]:
    """Remove tocha's own files of a folder of `kind`; returns the names of what was left (not tocha's)."""
    if kind == "export":
        _clean_exports(path)
    else:
        _clean_layout(path, RUN_LAYOUT if kind == "run" else COMPRESS_LAYOUT)
    return contents(path)


def _clean_layout(path: Path, layout: dict) -> None:
    for entry in list(path.iterdir()):
        spec = next((s for pattern, s in layout.items() if fnmatch.fnmatchcase(entry.name, pattern)), None)
        if spec is None or entry.is_symlink() and spec is not WHOLE:
            continue
        if spec is WHOLE:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        elif entry.is_dir() and isinstance(spec, dict):
            _clean_layout(entry, spec)
            _remove_if_empty(entry)
        elif entry.is_dir() and isinstance(spec, str) and (spec == "export" or kind_of(entry) == spec):
            if spec == "run":  # a nested run folder (compress's pruned run) may be being written right now
                lock = None if held_lock(entry) else lock_run_dir(entry)
            clean(entry, spec)
            if spec == "run" and lock is not None:
                lock.release()
            if not contents(entry):
                for name in (MARKER, LOCK):
                    (entry / name).unlink(missing_ok=True)
            _remove_if_empty(entry)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # files tocha did not write are in it: it stays


def _clean_exports(path: Path) -> None:
    for entry in list(path.iterdir()):
        if entry.is_file() and not entry.is_symlink() and is_tocha_export(entry):
            entry.unlink()
            Path(f"{entry}.parity.json").unlink(missing_ok=True)
        elif entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_file():
            entry.unlink()  # export_run's temporary of a killed process


def is_tocha_export(path: Path) -> bool:
    """Whether `path` is a model file written by `tocha export` (it carries tocha's metadata)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if path.suffix == ".safetensors" and len(head) == 8:
                size = int.from_bytes(head, "little")
                if size > 100 << 20:
                    return False
                header = json.loads(f.read(size))
                return "tocha" in (header.get("__metadata__") or {})
        if head[:4] == b"PK\x03\x04":  # .pt2 and TorchScript are zip archives: tocha adds extra/tocha.json
            import zipfile

            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("extra/tocha.json") for n in archive.namelist())
        if path.suffix == ".onnx":
            import onnx

            proto = onnx.load(str(path), load_external_data=False)
            return any(p.key == "tocha" for p in proto.metadata_props)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a tocha export
        return False
    return False


def check_out_vs_source(
    out: Path, source: Path, *, where: str, what: str, allowed_inside: tuple[str, ...] = ()
) -> None:
    """Refuse an output that is, holds or lies inside the source run folder (resolved paths compared).

    `allowed_inside` names the source's own sub-folders tocha writes derived files into (compressed/, export/).
    """
    out_r, source_r = Path(out).resolve(), Path(source).resolve()
    if out_r == source_r:
        problem = f"is the {what} itself"
    elif source_r.is_relative_to(out_r):
        problem = f"holds the {what} '{source}'"
    elif out_r.is_relative_to(source_r) and not any(
        out_r == source_r / name or out_r.parent == source_r / name for name in allowed_inside
    ):
        problem = f"lies inside the {what} '{source}'"
    else:
        return
    inside = f" (its own {', '.join(n + '/' for n in allowed_inside)} is allowed)" if allowed_inside else ""
    raise UserError(
        f"output '{out}' {problem}: writing there could destroy the run",
        where=where,
        fix=f"choose an output outside the run folder{inside}",
    )


class RunLock:
    """An exclusive flock on RUN/.tocha.lock, held by this process. The OS drops it when the process
    ends, however it ends (kill -9 included), so a lock is never left stale."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @property
    def held(self) -> bool:
        return _HELD.get(self.path) is self

    def release(self) -> None:
        if _HELD.get(self.path) is self:
            del _HELD[self.path]
            os.close(self.fd)  # closing the only descriptor drops the flock

    def __repr__(self) -> str:
        return f"RunLock('{self.path}', held={self.held})"


_HELD: dict[Path, RunLock] = {}  # resolved run folder -> its lock; lives until release or process exit


def held_lock(path: str | Path) -> RunLock | None:
    """This process's lock on `path`, if it holds one."""
    return _HELD.get(Path(path).resolve())


def lock_run_dir(path: str | Path) -> RunLock:
    """Lock the run folder `path` (created if needed) for writing, or raise UserError when another
    process holds it. Idempotent within a process: the same resolved path returns the held lock.

    Only writers lock (train, and the harness before it looks for a resume checkpoint); eval, predict
    and export read beside a writer: every file they read is replaced atomically.
    """
    path = Path(path)
    held = held_lock(path)
    if held is not None:
        return held
    if path.exists() and not path.is_dir():
        raise UserError(
            f"out '{path}' exists and is not a folder", where="config key out", fix="choose another out=PATH"
        )
    refuse_foreign(path, "run", where="config key out", label="run folder")  # before writing a byte there
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's PID is in it
    except OSError as exc:
        raise UserError(
            f"cannot write the run folder '{path}': {exc.strerror or exc}",
            where="config key out",
            fix="choose a writable location with out=PATH",
        ) from None
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer per folder is then up to the user
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"run folder '{path}' is in use by PID {holder} (another tocha train is writing it)",
                where="config key out",
                fix="wait for that run to end (or stop it), or choose another out=PATH; "
                "a killed run releases the folder at once",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: not even the PID fits
            os.close(fd)
            raise UserError(
                write_failure(exc, path / LOCK), where="config key out", fix="free disk space there, or choose out=PATH"
            ) from None
    lock = _HELD[path.resolve()] = RunLock(path.resolve(), fd)
    return lock
