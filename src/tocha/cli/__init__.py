"""`tocha` command line: a thin layer over the Python API, one module per command.

Each command module has ``add_parser(subparsers)`` (its options, beside its handler) and
``run(args, argv) -> int``; :data:`COMMANDS` is the registry that assembles them. User errors
(:class:`tocha.errors.UserError`) are caught once, here: one message, exit code 2, no traceback
unless --debug. Nothing heavy is imported before a command runs, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tocha.cli import bench, bench_model, compress, distill, env, export, generate, predict, train
from tocha.cli import eval as eval_
from tocha.cli._common import EXIT_USER_ERROR, BadUsage, Parser, rank
from tocha.cli._hints import key_value_hint, option_hint
from tocha.errors import UserError

# In the order `tocha --help` lists them.
COMMANDS = {
    "train": train,
    "eval": eval_,
    "predict": predict,
    "export": export,
    "compress": compress,
    "distill": distill,
    "bench-model": bench_model,
    "bench": bench,
    "generate": generate,
    "env": env,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each command's own parser, by name."""
    from tocha import __version__

    parser = Parser(
        prog="tocha",
        description="Train, evaluate, compress and deploy PyTorch models (image "
        "classifiers, character language models) with the right defaults.",
        epilog="Run 'tocha COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tocha {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, module in COMMANDS.items():
        command = commands[name] = module.add_parser(sub)
        # `tocha COMMAND --debug` works as well as `tocha --debug COMMAND`.
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show full tracebacks"
            + (" (and the output of every rank, not only rank 0's)" if name == "train" else ""),
        )
    return parser, commands


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse, collect key=value items that follow options, and hint at arguments in the other style."""
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        return args
    module, command = COMMANDS[args.command], commands[args.command]
    rest = argv[argv.index(args.command) + 1 :]
    # what argparse took as positional values (a `name=value` there may be a misplaced option); argparse
    # lists a parser's arguments only in the private _actions
    positionals = [
        v
        for a in command._actions
        if not a.option_strings and a.dest != "help"
        for v in _as_list(getattr(args, a.dest, None))
    ]
    candidates = [t for t in rest if t in extra or t in positionals]
    if getattr(module, "TAKES_OVERRIDES", False):
        from tocha.config import SHORTHANDS, schema

        hint = key_value_hint(args.command, command, rest, extra) or option_hint(
            args.command, command, candidates, skip={s.key for s in schema()} | set(SHORTHANDS)
        )
        if extra and not hint and not any(e.startswith("-") for e in extra):
            args.args += extra  # key=value after an option (`train data=digits --nproc 2 out=runs/x`): argparse
            extra = []  # stops collecting positionals at the option; the rest belong to the same list
    else:
        hint = option_hint(args.command, command, candidates)
    if hint:
        command.error(hint)
    if extra:
        parser.parse_args(argv)  # the usual message and exit 2 for what is really unknown
    return args


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except BadUsage:  # the parser printed its message and usage line
        return EXIT_USER_ERROR
    if args.command is None:
        build_parser()[0].print_help()
        return EXIT_USER_ERROR
    quiet = rank() > 0 and not args.debug
    _setup_logging(quiet)
    from tocha.launch import write_error_file

    try:
        return COMMANDS[args.command].run(args, argv)
    except UserError as err:
        write_error_file(str(err), secondary=False)
        if args.debug:
            raise
        if rank() == 0:  # every rank meets the same user error; one message is enough
            print(f"tocha {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"tocha {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from tocha.engine.distributed import RankFailed

        if not isinstance(exc, RankFailed):
            write_error_file(f"{type(exc).__name__}: {exc}", secondary=False)
            raise
        write_error_file(str(exc), secondary=True)
        if args.debug:
            raise
        print(f"tocha {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _setup_logging(quiet: bool = False) -> None:
    logger = logging.getLogger("tocha")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[rank {rank()}] " if rank() > 0 else ""
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False
