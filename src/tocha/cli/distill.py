"""`tocha distill`: train a student from a teacher run, with 'tocha train' key=value settings."""

from __future__ import annotations

import argparse
import functools
import sys

from tocha.cli._common import in_range, number, print_train_result
from tocha.errors import UserError

# key=value items may follow options, as for train; main() collects them into args.args
TAKES_OVERRIDES = True

EPILOG = """\
examples:
  tocha distill --teacher runs/resnet --student model=cnn model.width=8 epochs=5 out=runs/kd
  tocha distill --teacher runs/cnn --temperature 2 --alpha 0.5 model=mlp out=runs/kd-mlp
  tocha distill --teacher runs/cnn model=mlp --alpha 0.5 epochs=3 out=runs/kd   # flags between settings
  tocha distill --resume runs/kd          # continue an interrupted student, with its teacher and loss"""


def _temperature(text: str) -> float:
    value = number(text)  # the words of tocha.recipes.distill's own check
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"must be positive, got {text}; allowed: > 0 (1 = the teacher's own probabilities; 2 to 8 is usual)"
        )
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "distill",
        help="train a student model from a teacher run (knowledge distillation)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a student with the training engine of 'tocha train', on the "
        "teacher's data, with the loss alpha * T^2 * KL(teacher/T || student/T) "
        "+ (1 - alpha) * cross-entropy. Student settings are 'tocha train' "
        "key=value overrides.",
        epilog=EPILOG,
    )
    p.add_argument("args", nargs="*", metavar="key=value", help="student settings, as for 'tocha train'")
    p.add_argument("--teacher", metavar="RUN", help="run folder of the teacher (its best checkpoint); required")
    p.add_argument(
        "--resume",
        metavar="STUDENT",
        help="continue an interrupted student run from its newest valid checkpoint, with its own config, "
        "teacher, temperature and alpha (no other arguments)",
    )
    p.add_argument(
        "--student",
        nargs="+",
        action="extend",
        default=[],
        metavar="key=value",
        help="student settings (the same as trailing key=value arguments)",
    )
    p.add_argument(
        "--temperature", type=_temperature, default=None, help="softening temperature T, positive (default 4)"
    )
    p.add_argument(
        "--alpha",
        type=in_range(0, 1, allowed="between 0 and 1: 0 (labels only) to 1 (teacher only)"),
        default=None,
        help="weight of the teacher's soft targets (default 0.9, with T=4: the published recipes' values)",
    )
    p.add_argument(
        "--cache",
        choices=("auto", "true", "false"),
        default=None,
        help="compute the teacher's logits once when the training data is not augmented (default auto)",
    )
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.harness.signals import Interrupted
    from tocha.recipes.distill import ALPHA, TEMPERATURE, distill_run, resume_distill

    overrides = [*args.student, *args.args]
    if bad := [a for a in overrides if "=" not in a]:
        raise UserError(
            f"unexpected argument '{bad[0]}'",
            where="tocha distill",
            fix="student settings are key=value, e.g. model=cnn epochs=5 out=runs/kd",
        )
    flags = (("--temperature", args.temperature), ("--alpha", args.alpha), ("--cache", args.cache))
    given = [flag for flag, value in flags if value is not None]
    if args.resume:
        if args.teacher or overrides or given:
            extra = " ".join([*(["--teacher"] if args.teacher else []), *given, *overrides])
            raise UserError(
                f"--resume takes no other arguments, got {extra}",
                where="tocha distill --resume",
                fix="resume continues the student exactly as configured; start a new distill to change settings",
            )
        run_it = functools.partial(resume_distill, args.resume, argv=["tocha", *argv])
    elif not args.teacher:
        raise UserError(
            "--teacher RUN is required",
            where="tocha distill",
            fix="name the teacher's run folder, e.g. tocha distill --teacher runs/cnn model=cnn model.width=4",
        )
    else:
        run_it = functools.partial(
            distill_run,
            args.teacher,
            overrides,
            temperature=TEMPERATURE if args.temperature is None else args.temperature,
            alpha=ALPHA if args.alpha is None else args.alpha,
            cache=args.cache or "auto",
            argv=["tocha", *argv],
        )
    try:
        result = run_it()
    except Interrupted as stop:
        print(f"tocha distill: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    print_train_result(result)
    return 0
