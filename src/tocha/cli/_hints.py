"""Hints for arguments written in the other command style.

`tocha train` and `tocha distill` take key=value config overrides; the other commands take --options.
A `--name` given to the first kind whose name is a config key, or a `name=value` given to the second
kind whose name is one of its options, gets the spelling that works instead of argparse's bare
"unrecognized arguments".
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def _long_options(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """name (dashes as underscores) -> (action, its first --option string)."""
    found = {}
    for action in parser._actions:  # argparse has no public way to list a parser's options
        for option in action.option_strings:
            if option.startswith("--") and not option.startswith("--no-"):
                found.setdefault(option[2:].replace("-", "_"), (action, option))
    return found


def _config_keys() -> set[str]:
    from tocha.config import SHORTHANDS, schema  # only when a hint is being looked for

    return {spec.key for spec in schema()} | set(SHORTHANDS)


def _flag_spelling(action: argparse.Action, option: str, value: str) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):
        return option if value.lower() in ("true", "yes", "on", "1") else "--no-" + option[2:]
    if action.nargs == 0:  # store_true and the like
        return option if value.lower() in ("true", "yes", "on", "1") else f"nothing (leave {option} out)"
    return f"{option} {shlex.quote(value)}"


def key_value_hint(command: str, parser: argparse.ArgumentParser, tokens: list[str], unknown: list[str]) -> str | None:
    """For a command that takes key=value overrides: `--epochs 3` -> 'write epochs=3 ...'.

    `tokens` are the command's arguments in order (the value may follow the option); `unknown` are
    those argparse did not recognise.
    """
    own = _long_options(parser)
    keys = None
    for i, token in enumerate(tokens):
        if not token.startswith("--") or token == "--" or token not in unknown:
            continue
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if key in own:
            continue
        keys = _config_keys() if keys is None else keys
        if key not in keys:
            continue
        if not eq:
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            value = following if following and not following.startswith("-") and "=" not in following else "VALUE"
        given = token if eq or value == "VALUE" else f"{token} {value}"
        return f"'{given}': write {key}={value} (tocha {command} takes key=value config overrides, not --options)"
    return None


def option_hint(
    command: str, parser: argparse.ArgumentParser, tokens: list[str], *, skip: set[str] | None = None
) -> str | None:
    """For an --options command (or an option of a key=value one): `out=x` -> 'write --out x'.

    `tokens` are the arguments argparse did not take as option values; a token that names an
    existing file is left alone (it is a path), and so are the names in `skip`: the config keys of a
    command that takes key=value overrides (given `skip`, the hint reads for such a command).
    """
    own = _long_options(parser)
    for token in tokens:
        name, eq, value = token.partition("=")
        key = name.replace("-", "_")
        if not eq or token.startswith("-") or key not in own or key in (skip or ()) or Path(token).exists():
            continue
        action, option = own[key]
        why = (
            f"{option} is an option of tocha {command}, not a config key"
            if skip is not None
            else f"tocha {command} takes --options, not key=value"
        )
        return f"'{token}': write {_flag_spelling(action, option, value)} ({why})"
    return None
