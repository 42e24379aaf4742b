"""Goals for `tocha compress --goal`: what the user wants, and the search that tries candidates for it.

A goal is one of `speedup=X` (times faster than the fp32 ONNX at the chosen batch), `latency_ms=X`
(p50 at that batch) or `size_mb=X`. Every candidate is timed beside the fp32 reference in one
side-by-side timing (`measure.paired`); validation accuracy judges (at most `max_drop` points
below fp32), test accuracy is only reported. The search returns the fastest candidate within the
accuracy budget; when none meets the goal it returns the best it found and says why. A time budget
or Ctrl-C stops it with every finished candidate kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field

from tocha.errors import UserError, did_you_mean

KEYS = ("speedup", "latency_ms", "size_mb")


@dataclass(frozen=True)
class Goal:
    key: str
    value: float

    def met(self, speedup: float, latency_ms: float, megabytes: float) -> bool:
        return {
            "speedup": speedup >= self.value,
            "latency_ms": latency_ms <= self.value,
            "size_mb": megabytes <= self.value,
        }[self.key]

    def __str__(self) -> str:
        return f"{self.key}={self.value:g}"


def parse_goal(text: str) -> Goal:
    where, allowed = "tocha compress --goal", "speedup=X (> 1), latency_ms=X (> 0), size_mb=X (> 0)"
    key, sep, raw = text.partition("=")
    if not sep or key not in KEYS:
        hint = did_you_mean(key, KEYS) if sep else ""
        raise UserError(f"unknown goal '{text}'" + (f"; {hint}" if hint else ""), where=where, allowed=allowed)
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"goal {key} needs a number, got '{raw}'", where=where, allowed=allowed) from None
    if not value == value or value in (float("inf"),) or value <= 0 or (key == "speedup" and value <= 1):
        raise UserError(f"goal {key}={raw} cannot be reached or is no goal", where=where, allowed=allowed)
    return Goal(key, value)


def check_not_met(goal: Goal, fp32_ms: float, fp32_mb: float) -> None:
    """A latency or size goal that the fp32 export already meets: nothing to search for."""
    if (goal.key == "latency_ms" and fp32_ms <= goal.value) or (goal.key == "size_mb" and fp32_mb <= goal.value):
        now = f"{fp32_ms:.3f} ms" if goal.key == "latency_ms" else f"{fp32_mb:.2f} MB"
        raise UserError(
            f"goal {goal} is already met: the fp32 export is {now}",
            where="tocha compress --goal",
            fix="export it as it is (tocha export RUN), or ask for more (a smaller latency_ms / size_mb, or speedup=)",
        )


@dataclass
class Candidate:
    name: str
    val_accuracy: float | None
    test_accuracy: float | None
    p50_ms: float
    p90_ms: float | None
    fp32_ms: float  # the reference's time in the same timing
    megabytes: float
    params: int | None = None
    macs: int | None = None
    path: str | None = None
    kept: bool = False
    why: str = ""
    note: str = ""  # how it was made (ranges, layers kept fp32, pruning ratio, ...)

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.p50_ms


@dataclass
class SearchResult:
    goal: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    met: bool = False
    why: str = ""
    stopped: str | None = None  # "time budget" | "interrupted"


def search(
    goal: Goal,
    reference: Candidate,
    builders: Iterable[tuple[str, Callable[[], Candidate]]],
    *,
    max_drop: float,
    time_budget_s: float,
    echo=print,
    clock=time.monotonic,
    on_start=lambda name: None,
) -> SearchResult:
    """Build and judge each candidate in turn; the fastest within `max_drop` points of validation accuracy wins.

    `builders` may be a generator that reads the verdicts so far (each candidate is judged before
    the next one is asked for). A time budget spent, or Ctrl-C (SIGINT, also while a fine-tune
    runs), stops the search with every finished candidate kept."""
    from tocha.harness.signals import Interrupted

    result = SearchResult(str(goal), [reference])
    start = clock()
    planned = len(builders) if isinstance(builders, Sized) else None
    upcoming = iter(builders)
    while True:
        try:
            name, build = next(upcoming)  # a generator may measure here what comes next (pruning probes)
        except StopIteration:
            break
        except (KeyboardInterrupt, Interrupted):
            result.stopped = "interrupted"
            echo("interrupted: stopping with what is finished")
            break
        if clock() - start > time_budget_s:
            result.stopped = "time budget"
            echo(f"time budget ({time_budget_s:g} s) spent before {name}: stopping with what is finished")
            break
        on_start(name)
        try:
            c = build()
        except (KeyboardInterrupt, Interrupted):
            result.stopped = "interrupted"
            echo(f"interrupted during {name}: stopping with what is finished")
            break
        drop = (
            (reference.val_accuracy - c.val_accuracy) * 100
            if reference.val_accuracy is not None and c.val_accuracy is not None
            else 0.0
        )
        if not c.why:  # a builder may have rejected it already (e.g. "too noisy to decide")
            if drop > max_drop:
                c.why = f"costs {drop:.2f} val accuracy points (allowed {max_drop:g})"
            elif c.speedup <= 1.0 and goal.key != "size_mb":  # a size goal asks for nothing about speed
                c.why = f"not faster ({c.speedup:.2f}x)"
            else:
                c.kept, c.why = True, "within the accuracy budget"
        result.candidates.append(c)
        echo(
            f"{c.name:<24} {c.speedup:5.2f}x  {c.p50_ms:8.3f} ms  {c.megabytes:7.2f} MB  "
            f"val {c.val_accuracy if c.val_accuracy is not None else float('nan'):.4f} ({-drop:+.2f})  "
            f"{'kept' if c.kept else 'rejected'}: {c.why}"
        )
    kept = [c for c in result.candidates[1:] if c.kept]
    if goal.key == "size_mb":
        within = [c for c in kept if c.megabytes <= goal.value]
        pick = min(within or kept, key=lambda c: c.megabytes if not within else c.p50_ms, default=None)
    else:
        pick = min(kept, key=lambda c: c.p50_ms, default=None)
    result.chosen = pick or reference
    result.met = pick is not None and goal.met(pick.speedup, pick.p50_ms, pick.megabytes)
    if result.met:
        result.why = (
            f"goal {goal} met by {pick.name} ({pick.speedup:.2f}x, {pick.p50_ms:.3f} ms, {pick.megabytes:.2f} MB)"
        )
    elif pick is None:
        result.why = f"goal {goal} missed: no candidate was faster within {max_drop:g} val points; fp32 stays"
    else:
        result.why = (
            f"goal {goal} missed: the best within {max_drop:g} val points is {pick.name} "
            f"({pick.speedup:.2f}x, {pick.p50_ms:.3f} ms, {pick.megabytes:.2f} MB)"
        )
    if result.stopped:
        of = f" of {planned}" if planned is not None else ""
        result.why += f" (stopped: {result.stopped}, {len(result.candidates) - 1}{of} candidates tried)"
    return result


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both latency and validation accuracy."""
    front = []
    for c in candidates:
        acc = c.val_accuracy if c.val_accuracy is not None else 0.0
        if not any(
            o is not c
            and o.p50_ms <= c.p50_ms
            and (o.val_accuracy or 0.0) >= acc
            and (o.p50_ms < c.p50_ms or (o.val_accuracy or 0.0) > acc)
            for o in candidates
        ):
            front.append(c)
    return front
