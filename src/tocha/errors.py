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


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
    neighbouring characters each cost one edit ('modle' is one edit from 'model', as a typist sees it)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    """Every choice at the smallest edit distance from `word`, if that distance is small for its length
    (a quarter of the characters, at least one); a dotted choice also matches by its last part
    ('root' finds 'data.root'). When nothing is that close, difflib's best match, if any."""
    choices = list(dict.fromkeys(choices))
    limit = max(1, len(word) // 4)
    scored = []
    for choice in choices:
        distance = edit_distance(word, choice)
        if "." in choice and "." not in word:
            distance = min(distance, edit_distance(word, choice.rsplit(".", 1)[1]))
        if distance <= limit:
            scored.append((distance, abs(len(choice) - len(word)), choice))
    if scored:
        best = min(d for d, _, _ in scored)
        return [c for d, _, c in sorted(scored) if d == best]
    return difflib.get_close_matches(word, choices, n=1, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ "did you mean 'x'?" (or "'x' or 'y'", ...) for the closest choices, or '' when nothing is close."""
    close = [f"'{c}'" for c in close_matches(word, choices)]
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else ", ".join(close[:-1]) + " or " + close[-1]
    return f"did you mean {listed}?"
