"""Checks of user-given paths, one place for all of them: each names what the path really is
("is a folder", "is not a regular file", "cannot be read") instead of a generic "does not exist",
and every failure is a :class:`UserError` naming the config key (or option) it came from.

Import-light (no torch): the config module uses the pure length check.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tocha.errors import UserError

NAME_MAX_FALLBACK = 255
PATH_MAX_FALLBACK = 4096
_SHOWN_CHARS = 80


def shown(path: str | Path) -> str:
    """A path as a message shows it: long ones cut in the middle so the message stays readable."""
    text = str(path)
    if len(text) <= _SHOWN_CHARS:
        return text
    half = _SHOWN_CHARS // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"


def _limits(path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system the path would land on (its nearest existing folder)."""
    probe = path.absolute()
    while True:
        try:
            if probe.is_dir():
                break
        except OSError:
            pass
        if probe.parent == probe:
            break
        probe = probe.parent
    limits = []
    for name, fallback in (("PC_NAME_MAX", NAME_MAX_FALLBACK), ("PC_PATH_MAX", PATH_MAX_FALLBACK)):
        try:
            limits.append(int(os.pathconf(probe, name)))
        except (OSError, ValueError, AttributeError):
            limits.append(fallback)
    return limits[0], limits[1]


def length_problem(path: str | Path, where: str) -> UserError | None:
    """A UserError when a name in `path`, or the whole absolute path, is longer than the OS allows."""
    path = Path(path).expanduser()
    name_max, path_max = _limits(path)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            return UserError(
                f"the name '{shown(part)}' in path '{shown(path)}' is {len(os.fsencode(part))} bytes long",
                where=where,
                allowed=f"names of at most {name_max} bytes",
                fix="use a shorter file or folder name",
            )
    total = len(os.fsencode(str(path.absolute())))
    if total >= path_max:
        return UserError(
            f"path '{shown(path)}' is {total} bytes long (as an absolute path)",
            where=where,
            allowed=f"paths shorter than {path_max} bytes",
            fix="use a shorter path",
        )
    return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _stat(path: Path, where: str, expected: str) -> os.stat_result:
    problem = length_problem(path, where)
    if problem is not None:
        raise problem
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(
                f"'{shown(path)}' is a broken symbolic link (it points to '{os.readlink(path)}', which does not exist)",
                where=where,
                fix=f"point it at {expected}",
            ) from None
        raise UserError(
            f"'{shown(path)}' does not exist", where=where, fix=f"check the path; it should be {expected}"
        ) from None
    except NotADirectoryError:
        raise UserError(
            f"'{shown(path)}' does not exist (a part of it is a file, not a folder)",
            where=where,
            fix=f"check the path; it should be {expected}",
        ) from None
    except PermissionError:
        raise UserError(
            f"'{shown(path)}' cannot be reached (permission denied on a folder above it)",
            where=where,
            fix="check the folder permissions (chmod), or use another path",
        ) from None
    except OSError as exc:  # ELOOP, EIO, ...
        raise UserError(
            f"'{shown(path)}' cannot be used ({exc.strerror or exc})",
            where=where,
            fix=f"check the path; it should be {expected}",
        ) from None


def require_file(path: str | Path, where: str, *, expected: str = "a file") -> Path:
    """`path` as a readable regular file, or a UserError saying what it is instead."""
    path = Path(path).expanduser()
    mode = _stat(path, where, expected).st_mode
    if stat.S_ISDIR(mode):
        raise UserError(f"'{shown(path)}' is a folder, not a file", where=where, fix=f"pass {expected}")
    if not stat.S_ISREG(mode):
        raise UserError(
            f"'{shown(path)}' is not a regular file (it is {_kind(mode)})", where=where, fix=f"pass {expected}"
        )
    if not os.access(path, os.R_OK):
        raise UserError(
            f"'{shown(path)}' cannot be read (permission denied)",
            where=where,
            fix="make it readable (chmod +r), or pass another file",
        )
    return path


def require_dir(path: str | Path, where: str, *, expected: str = "a folder") -> Path:
    """`path` as a folder that can be listed and entered, or a UserError saying what it is instead."""
    path = Path(path).expanduser()
    mode = _stat(path, where, expected).st_mode
    if stat.S_ISREG(mode):
        raise UserError(f"'{shown(path)}' is a file, not a folder", where=where, fix=f"pass {expected}")
    if not stat.S_ISDIR(mode):
        raise UserError(f"'{shown(path)}' is not a folder (it is {_kind(mode)})", where=where, fix=f"pass {expected}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(
            f"folder '{shown(path)}' cannot be read (permission denied)",
            where=where,
            fix="make it readable (chmod +rx), or pass another folder",
        )
    return path


def require_file_or_dir(path: str | Path, where: str, *, expected: str = "a file or a folder") -> Path:
    """`path` as a readable regular file or folder (e.g. a text corpus, weights or a run folder)."""
    path = Path(path).expanduser()
    mode = _stat(path, where, expected).st_mode
    if stat.S_ISDIR(mode):
        return require_dir(path, where, expected=expected)
    return require_file(path, where, expected=expected)
