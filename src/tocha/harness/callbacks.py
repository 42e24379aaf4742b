"""User callbacks: the engine's three hook points, no more (no event bus).

A callback is any object with some of these methods, or a dict of plain callables under the same
names::

    class StopAtLoss:
        def on_eval_end(self, record, improved):
            if record["val.loss"] < 0.3:
                raise tocha.StopTraining("val.loss below 0.3")

    tocha.fit(model, (x, y), callbacks=[StopAtLoss()])
    tocha.fit(model, (x, y), callbacks={"on_log": lambda record: print(record["train.loss"])})

- ``on_log(record)``: every ``log_every`` optimizer steps; the record holds the interval's mean
  ``train.loss`` (and ``train.accuracy``), ``lr``, ``samples_per_second``, ``step``, ``epoch``.
- ``on_eval_end(record, improved)``: after each evaluation; ``val.*`` metrics, ``improved`` says
  whether the monitored metric beat the best so far.
- ``on_checkpoint(info)``: where a checkpoint is due (epoch ends, ``checkpoint.every_steps``);
  ``info`` holds ``step``, ``epoch``, ``batch`` and ``run_dir`` (None without a run folder: then
  nothing is written).

Raising :class:`tocha.StopTraining` from any of them ends the run cleanly: the step finishes, a
checkpoint is written (with a run folder), the best weights are loaded and the result says why it
stopped. Records are copies: changing them changes nothing in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tocha.errors import UserError

HOOKS = ("on_log", "on_eval_end", "on_checkpoint")


class Callback(Protocol):
    """Any subset of the three methods (the Protocol lists them all for type checkers)."""

    def on_log(self, record: dict) -> None: ...

    def on_eval_end(self, record: dict, improved: bool) -> None: ...

    def on_checkpoint(self, info: dict) -> None: ...


def collect(callbacks: Any) -> dict[str, list[Callable]]:
    """{hook name: the callables to call, in the order given} from objects, dicts, or a list of them."""
    found: dict[str, list[Callable]] = {name: [] for name in HOOKS}
    if callbacks is None:
        return found
    items = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    for item in items:
        if isinstance(item, dict):
            unknown = sorted(set(item) - set(HOOKS))
            if unknown:
                raise UserError(
                    f"unknown callback hook {unknown[0]!r}", where="tocha.fit callbacks", allowed=", ".join(HOOKS)
                )
            pairs = list(item.items())
        else:
            pairs = [(name, getattr(item, name)) for name in HOOKS if callable(getattr(item, name, None))]
            if not pairs:
                raise UserError(
                    f"callback {item!r} has none of the hook methods",
                    where="tocha.fit callbacks",
                    allowed=", ".join(HOOKS),
                    fix="give it a method named after a hook, or pass {'on_eval_end': function}",
                )
        for name, fn in pairs:
            if not callable(fn):
                raise UserError(f"callback {name} is not callable", where="tocha.fit callbacks")
            found[name].append(fn)
    return found


def chain(own: Callable | None, users: list[Callable], convert: Callable = lambda *a: a) -> Callable | None:
    """The harness's own hook first (it writes files), then the user's, each with converted arguments."""
    if not users:
        return own

    def hook(*args):
        if own is not None:
            own(*args)
        for fn in users:
            fn(*convert(*args))

    return hook
