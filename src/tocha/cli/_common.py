"""Pieces every command module shares: the parser class, argument types, rank, result printing.

Import-light on purpose (argparse and the standard library only): every command's parser is built
for `tocha --help`, so nothing here may pull in torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2
DEVICE_HELP = "auto, cpu, cuda, cuda:N, mps (default auto)"


class BadUsage(Exception):
    """Raised by :meth:`Parser.error` after the message is printed; `main` turns it into exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with tocha's error shape and a lazily built epilog.

    An error prints ``tocha COMMAND: error: ...`` first, as a UserError does, then the usage line, so
    every bad argument reads the same whoever found it. It raises :class:`BadUsage` instead of calling
    ``sys.exit``, so in-process callers of ``main`` get 2 back. A callable epilog is rendered only when
    that command's help is shown (the train epilog lists the config schema).
    """

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        self.print_usage(sys.stderr)
        raise BadUsage(message)

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


# ---------------------------------------------------------------- argument types (raise ArgumentTypeError)


def _convert(text: str, convert, what: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def number(text: str) -> float:
    return _convert(text, float, "a number")


def positive_int(text: str) -> int:
    value = _convert(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _convert(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _convert(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _convert(text, float, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """An accuracy: 0 < value <= 1."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be an accuracy between 0 and 1, got {text}")
    return value


def in_range(low: float, high: float, *, high_open: bool = False, allowed: str) -> Callable[[str], float]:
    """A number in [low, high] (or [low, high)); the message says `allowed`."""

    def check(text: str) -> float:
        value = _convert(text, float, "a number")
        if not (low <= value < high if high_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {allowed}")
        return value

    return check


def one_of(what: str, allowed: Sequence[str]) -> Callable[[str], str]:
    """One name from `allowed`; the message reads like the library's own ("unknown quantization 'x'; allowed: ...")."""

    def check(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} '{text}'; allowed: {', '.join(allowed)}")
        return text

    return check


def list_of(what: str, item: Callable[[str], object], example: str) -> Callable[[str], list]:
    """A comma-separated, non-empty list, each entry checked by `item`."""

    def check(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"'{text}' is not a list of {what}, e.g. {example}")
        try:
            return [item(p) for p in parts]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"'{text}' is not a list of {what} ({err}), e.g. {example}") from None

    return check


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; whether it exists here is checked when the command runs."""
    kind, colon, index = text.partition(":")
    if text in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and colon and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device '{text}'; allowed: auto, cpu, cuda, cuda:N, mps")


# ---------------------------------------------------------------- shared by the training commands


def rank() -> int:
    """This process's rank under torchrun (0 otherwise); only rank 0 talks unless --debug."""
    text = os.environ.get("RANK", "0")
    return int(text) if text.isdigit() else 0


def print_train_result(result) -> None:
    """The task's closing lines (its speed last, printed with the cost)."""
    for line in result.headline[:-1]:
        print(line)
    print_cost(result, result.headline[-1] if result.headline else "")


def print_cost(result, speed: str) -> None:
    s = result.summary
    print(
        f"{speed}, {s['wall_seconds']:.1f} s wall, peak memory {s['peak_memory_mb']:.0f} MB ({s['peak_memory_kind']})"
    )
    if result.run_dir is not None:
        print(f"report: {result.run_dir / 'report.html'}")
