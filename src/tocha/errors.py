"""The one exception type for mistakes a user can fix (bad config, missing data, ...).

The CLI catches it once, prints ``str(error)`` and exits with code 2; library callers get
a normal exception with the same message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in what the user asked for, with what was wrong, where, what is allowed, the fix."""

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        allowed: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what, self.where, self.allowed, self.fix = what, where, allowed, fix
        super().__init__(self.message())

    def message(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        if self.fix:
            text += f". {self.fix}"
        return text


class UserErrors(UserError):
    """Several user errors found at once (config validation reports all of them together)."""

    def __init__(self, errors: list[UserError]) -> None:
        self.errors = errors
        lines = [f"  - {e.message()}" for e in errors]
        Exception.__init__(self, f"{len(errors)} problems in the configuration:\n" + "\n".join(lines))
        self.what, self.where, self.allowed, self.fix = str(self), None, None, None

    def message(self) -> str:
        return str(self)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""
