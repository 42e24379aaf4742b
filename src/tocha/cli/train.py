"""`tocha train`: a YAML config and/or key=value overrides -> a run folder with a report."""

from __future__ import annotations

import argparse
import sys

from tocha.cli._common import print_train_result, rank
from tocha.errors import UserError

# key=value items may follow options (`train data=digits --nproc 2 out=runs/x`); main() collects them into args.args
TAKES_OVERRIDES = True

EPILOG = """\
examples:
  tocha train                                     # seed CNN on Fashion-MNIST, run folder under runs/
  tocha train data=fashion-mnist model=mlp epochs=2 batch_size=100 optimizer=sgd lr=0.5 out=runs/mlp
  tocha train configs/fashion_mnist_cnn.yaml epochs=5 precision=bf16 out=runs/cnn
  tocha train data=digits model=mlp epochs=30 out=runs/digits
  tocha train data=imagefolder data.root=PATH model=resnet18 image_size=64 out=runs/folders
  tocha train runs/cnn/config.yaml out=runs/cnn-again   # a run's resolved config, fed back
  tocha train --resume runs/cnn                   # continue an interrupted run exactly where it stopped
  tocha train out=runs/job resume=auto            # resume if runs/job has a checkpoint, else start
  tocha train data=digits model=mlp --nproc 2 out=runs/ddp   # 2 processes (DDP) through torchrun's launcher
  torchrun --nproc-per-node 2 -m tocha train data=digits model=mlp out=runs/ddp   # the same, by torchrun
  tocha train task=charlm out=runs/lm             # character LSTM on the fortunes package's English text
  tocha train task=charlm data.path=corpus.txt model=gru model.hidden=512 seq_len=128 out=runs/lm

`data=NAME` and `model=NAME` are short for data.name=NAME and model.name=NAME.
Config keys (key=value; YAML files use the same names, nested by section):"""


def _epilog() -> str:
    from tocha.config import help_text  # only when `tocha train --help` is shown

    return EPILOG + help_text()


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model and write a run folder with a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model. Arguments are an optional YAML config file followed by key=value overrides.",
        epilog=_epilog,
    )
    p.add_argument(
        "args", nargs="*", metavar="[CONFIG.yaml] key=value", help="a YAML config file and/or key=value overrides"
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run from its newest valid checkpoint, with its own config (no other arguments)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N processes of this machine "
        "(DistributedDataParallel started through torchrun's launcher; one per GPU on CUDA). "
        "batch_size stays the global batch",
    )
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha import config

    path, overrides = None, []
    for i, item in enumerate(args.args):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            path = item
        else:
            raise UserError(
                f"unexpected argument '{item}'",
                where="tocha train",
                fix="give at most one config file, first, then key=value overrides",
            )
    if args.resume:
        cfg = _resume_config(args.resume, args.args)
    else:
        cfg = config.load(path, overrides)
    if args.nproc is not None and args.nproc != 1:
        from tocha.launch import check_nproc, launch

        check_nproc(args.nproc, cfg.device)
        from tocha.tasks import info

        if info(cfg.task).one_process:
            raise UserError(
                f"task={cfg.task} runs in one process",
                where="tocha train --nproc",
                fix="drop --nproc (a model of this size trains fastest in one process)",
            )
        if cfg.time_budget_s:
            raise UserError(
                f"time_budget_s={cfg.time_budget_s:g} plans the epochs of one process, not {args.nproc}",
                where="tocha train --nproc, config key time_budget_s (preset=best sets it)",
                fix="add time_budget_s=0 and choose epochs, or drop --nproc",
            )
        return launch(args.nproc, _without_nproc(argv), debug=args.debug)
    return train_task(cfg, argv)


def train_task(cfg, argv: list[str]) -> int:
    """Run the harness with the task of `cfg.task` (the registry picks it) and print its closing lines."""
    from tocha.harness import train
    from tocha.harness.signals import Interrupted

    try:
        result = train(cfg, argv=["tocha", *argv])
    except Interrupted as stop:
        if rank() == 0:
            print(f"tocha train: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    if rank() == 0:
        print_train_result(result)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The `train` arguments for each launched process: --nproc and global flags removed."""
    out, skip = [], False
    for item in argv[argv.index("train") + 1 :]:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc=") and item != "--debug":
            out.append(item)
    return out


def _resume_config(run_dir: str, extra: list[str]):
    from tocha.harness.run import resume_config

    if extra:
        raise UserError(
            f"--resume takes no other arguments, got {' '.join(extra)}",
            where="tocha train --resume",
            fix="resume continues the run exactly as configured; start a new run to change settings",
        )
    return resume_config(run_dir, command="train")
