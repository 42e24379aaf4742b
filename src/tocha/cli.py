"""`tocha` command line: a thin layer over the Python API.

User errors (:class:`tocha.errors.UserError`) are caught once, here: one message, exit code 2,
no traceback unless --debug. Nothing heavy is imported before a command runs, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tocha.errors import UserError

EXIT_USER_ERROR = 2

TRAIN_EPILOG = """\
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


def _parser() -> argparse.ArgumentParser:
    from tocha import __version__

    parser = argparse.ArgumentParser(
        prog="tocha", description="Train, evaluate, compress and deploy PyTorch models (image classifiers, character "
                    "language models) with the right defaults.",
        epilog="Run 'tocha COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"tocha {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model and write a run folder with a report",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train a model. Arguments are an optional YAML config file followed by "
                                       "key=value overrides.",
                           epilog=TRAIN_EPILOG + _config_help())
    train.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key=value",
                       help="a YAML config file and/or key=value overrides")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its newest valid "
                       "checkpoint, with its own config (no other arguments)")
    train.add_argument("--nproc", type=int, metavar="N", help="train on N processes of this machine "
                       "(DistributedDataParallel started through torchrun's launcher; one per GPU on CUDA). "
                       "batch_size stays the global batch")

    ev = sub.add_parser("eval", help="evaluate a run's best checkpoint on the test split")
    ev.add_argument("run", help="run folder written by 'tocha train'")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default test)")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    ev.add_argument("--batch-size", type=int, default=512, help="evaluation batch size (default 512)")

    pr = sub.add_parser("predict", help="top-k classes with probabilities for image files")
    pr.add_argument("run", help="run folder written by 'tocha train', or an ONNX file from 'tocha export'")
    pr.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    pr.add_argument("--top-k", type=int, default=3, help="how many classes to show (default 3)")
    pr.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default best)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ex = sub.add_parser("export", help="export a run's best model (ONNX, torch.export, TorchScript, safetensors) "
                        "with a parity check", formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Write the run's best model as a deployable file with the class names and "
                                    "normalisation embedded, then check it against the PyTorch model on up to "
                                    "--samples test images: max abs logit difference (<= 1e-4) and top-1 "
                                    "agreement (100%), printed and stored in FILE.parity.json. A file that fails "
                                    "the check is not written.",
                        epilog="examples:\n  tocha export runs/cnn                       # runs/cnn/export/model.onnx\n"
                               "  tocha export runs/cnn --format pt2 --out cnn.pt2\n"
                               "  tocha predict runs/cnn/export/model.onnx shirt.png   # the file alone is enough")
    ex.add_argument("run", help="run folder written by 'tocha train'")
    ex.add_argument("--format", default="onnx", help="onnx (default), pt2 (torch.export), torchscript, safetensors")
    ex.add_argument("--out", help="output file (default RUN/export/model.<ext>)")
    ex.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    ex.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                    help="a free batch dimension (default); --no-dynamic-batch fixes it at 1")
    ex.add_argument("--samples", type=_positive_int, default=512, help="test images for the parity check (default 512)")
    ex.add_argument("--precision", default="fp32",
                    help="fp32 (default); fp16 (onnx, pt2, torchscript) or bf16 (pt2, torchscript) halve the file "
                         "for GPUs; parity then allows a 0.1 (fp16) / 0.5 (bf16) logit difference and 99%%/98%% "
                         "top-1 agreement")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    co = sub.add_parser("compress", help="prune and/or int8-quantize a run's model; each step kept only if it pays",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Export the run's model to fp32 ONNX and measure it on this machine. Then, when "
                                    "asked, prune channels (torch-pruning) and fine-tune with the same training "
                                    "engine, and quantize to int8 for ONNX Runtime. Every step is measured (test "
                                    "accuracy, latency) and kept only if it is faster and loses at most "
                                    "--max-accuracy-drop points against the best artifact so far; otherwise it is "
                                    "rejected, said so, and the better artifact stays the result.",
                        epilog="examples:\n"
                               "  tocha compress runs/cnn                              # int8 only\n"
                               "  tocha compress runs/cnn --prune 0.5 --finetune-epochs 2 --out runs/cnn-small\n"
                               "  tocha compress runs/cnn --prune 0.5 --quantize none   # prune + fine-tune only\n"
                               "  tocha compress runs/mlp --quantize int8-dynamic       # Linear-heavy models")
    co.add_argument("run", help="run folder written by 'tocha train'")
    co.add_argument("--prune", type=float, default=0.0, metavar="RATIO",
                    help="remove this share of the MACs (or --prune-target params) by pruning, e.g. 0.5 (default 0: "
                         "no pruning)")
    co.add_argument("--prune-method", default="channels",
                    help="channels (structured, torch-pruning: smaller and faster; default) or masks "
                         "(torch.nn.utils.prune zeros: NOT faster, offered with a warning)")
    co.add_argument("--prune-target", default="macs", help="what --prune reduces: macs (default) or params")
    co.add_argument("--prune-scope", default="uniform",
                    help="uniform (the same share of channels in every layer; default) or global (rank channels "
                         "across layers)")
    co.add_argument("--prune-steps", type=_positive_int, default=1,
                    help="iterative pruning: reach the ratio in N prune + fine-tune rounds (default 1)")
    co.add_argument("--prune-round-to", type=_positive_int, default=8,
                    help="keep channel counts multiples of this (default 8: CPU kernels work in blocks of 8 "
                         "channels; odd counts can make a pruned model slower); 1 = exact")
    co.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning (default 2)")
    co.add_argument("--finetune-lr", type=_positive_float, default=None,
                    help="fine-tuning learning rate (default: a tenth of the run's)")
    co.add_argument("--quantize", default="int8",
                    help="int8 (static, calibrated; best for conv nets; default), int8-dynamic (weights only, "
                         "activations at run time; for Linear/LSTM-heavy models), none")
    co.add_argument("--calibration", default="minmax", help="minmax (default), entropy, percentile")
    co.add_argument("--quantize-edges", action="store_true",
                    help="quantize the first and last layers too (default: they stay fp32, which keeps accuracy)")
    co.add_argument("--calibration-batches", type=_positive_int, default=8, help="training batches of 64 (default 8)")
    co.add_argument("--max-accuracy-drop", type=float, default=1.0,
                    help="percentage points of test accuracy a step may cost (default 1)")
    co.add_argument("--batch", type=_positive_int, default=64, help="batch size for the latency check (default 64)")
    co.add_argument("--out", help="output folder (default RUN/compressed)")
    co.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    ds = sub.add_parser("distill", help="train a student model from a teacher run (knowledge distillation)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train a student with the training engine of 'tocha train', on the teacher's "
                                    "data, with the loss alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * "
                                    "cross-entropy. Student settings are 'tocha train' key=value overrides.",
                        epilog="examples:\n"
                               "  tocha distill --teacher runs/resnet --student model=cnn model.width=8 epochs=5 "
                               "out=runs/kd\n"
                               "  tocha distill --teacher runs/cnn --temperature 2 --alpha 0.5 model=mlp "
                               "out=runs/kd-mlp")
    ds.add_argument("args", nargs="*", metavar="key=value", help="student settings, as for 'tocha train'")
    ds.add_argument("--teacher", required=True, metavar="RUN", help="run folder of the teacher (its best checkpoint)")
    ds.add_argument("--student", nargs="+", action="extend", default=[], metavar="key=value",
                    help="student settings (the same as trailing key=value arguments)")
    ds.add_argument("--temperature", type=float, default=4.0, help="softening temperature T (default 4)")
    ds.add_argument("--alpha", type=float, default=0.7, help="weight of the teacher's soft targets (default 0.7)")
    ds.add_argument("--cache", choices=("auto", "true", "false"), default="auto",
                    help="compute the teacher's logits once when the training data is not augmented (default auto)")

    bm = sub.add_parser("bench-model", help="latency, throughput, size and accuracy of runs and exported files",
                        description="Time each artifact (a run folder, or a .onnx/.pt2 file from tocha export/"
                                    "compress) at each batch size after a warm-up: p50/p90 latency, samples/s, "
                                    "size on disk, parameters, and test accuracy on the run's test split.")
    bm.add_argument("artifacts", nargs="+", help="run folders and .onnx/.pt2 files")
    bm.add_argument("--batch", default="1,64", help="comma-separated batch sizes (default 1,64)")
    bm.add_argument("--calls", type=_positive_int, default=50, help="timed calls per batch size (default 50)")
    bm.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for both runtimes")
    bm.add_argument("--runtime", default="",
                    help="comma-separated runtimes: torch, ort (a run folder is exported to ONNX for ort); "
                         "default: each artifact's own")
    bm.add_argument("--json", metavar="PATH", help="also write the rows as JSON")

    bench = sub.add_parser(
        "bench", help="time the tutorial loop, a raw loop, tocha and Lightning on the same workload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the same model with the same batches, optimizer and seed four ways, interleaved, "
                    "after a warm-up, and print medians and ratios: samples/s, ms/step, step time relative "
                    "to the raw loop, speed-up over the tutorial loop, test accuracy, time to a target "
                    "accuracy, peak memory.",
        epilog="runners:\n"
               "  tutorial   torchvision dataset + ToTensor + DataLoader, as the seed tutorials write it\n"
               "  raw        a hand-written loop over pre-made device tensors: the floor\n"
               "  tocha      tocha.fit with the same model and optimizer\n"
               "  lightning  PyTorch Lightning's Trainer, logger/checkpoints/progress off (when installed)\n\n"
               "examples:\n"
               "  tocha bench --quick\n"
               "  tocha bench --model mlp --epochs 2 --repeats 3\n"
               "  tocha bench --model cnn --devices cpu,cuda --json bench.json")
    bench.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                       help="seed 004's MLP (batch 100, lr 0.5) or seed 000's CNN (batch 40, lr 0.01); default mlp")
    bench.add_argument("--data", choices=("fashion-mnist", "digits"), default=None,
                       help="default: fashion-mnist when its files are installed, else digits")
    bench.add_argument("--devices", default="auto", help="comma-separated: cpu, cuda, auto (default auto: cuda if "
                       "present, else cpu); cuda is skipped with a note when absent")
    bench.add_argument("--runners", default="tutorial,raw,tocha,lightning", help="which loops (default all four)")
    bench.add_argument("--epochs", type=_positive_int, default=None, help="epochs per run (default 2; 1 with --quick)")
    bench.add_argument("--repeats", type=_positive_int, default=None,
                       help="timed runs per runner (default 3; 1 with --quick)")
    bench.add_argument("--batch-size", type=_positive_int, default=None, help="default: the seed tutorial's")
    bench.add_argument("--lr", type=_positive_float, default=None,
                       help="SGD learning rate (default: the seed tutorial's)")
    bench.add_argument("--target", type=_fraction, default=None,
                       help="test accuracy for the time-to-target column (default 0.80 mlp, 0.85 cnn)")
    bench.add_argument("--train-samples", type=_positive_int, default=None,
                       help=f"use only the first N training images (--quick: {6000})")
    bench.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for every runner "
                       "(default: torch's default, every usable core)")
    bench.add_argument("--seed", type=int, default=0, help="seed for weights and data order (default 0)")
    bench.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass")
    bench.add_argument("--quick", action="store_true", help="a smoke run: 6000 images, 1 epoch, 1 repeat")
    bench.add_argument("--json", metavar="PATH", help="also write the medians as JSON")

    gen = sub.add_parser("generate", help="generate text from a character language model (task=charlm)",
                         description="Stream characters sampled from a task=charlm run (or its .safetensors "
                                     "checkpoint alone) to the terminal.",
                         epilog="examples:\n  tocha generate runs/lm --prompt 'The ' --length 400\n"
                                "  tocha generate runs/lm/checkpoints/best.safetensors --temperature 0.5 --top-k 20 "
                                "--seed 1", formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("run", help="run folder written by 'tocha train task=charlm', or one of its .safetensors files")
    gen.add_argument("--prompt", default="", help="text to start from (default: a new line)")
    gen.add_argument("--length", type=_positive_int, default=400, help="characters to generate (default 400)")
    gen.add_argument("--temperature", type=float, default=0.8,
                     help="softmax temperature: lower is safer, higher more varied; 0 = always the likeliest "
                          "(default 0.8)")
    gen.add_argument("--top-k", type=int, default=0, help="sample only among the k likeliest characters (0 = all)")
    gen.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    gen.add_argument("--skip-unknown", action="store_true",
                     help="drop prompt characters the model never saw instead of stopping")
    gen.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run folder")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")

    env = sub.add_parser("env", help="versions, devices, threads, and what tocha would choose and why")
    env.add_argument("--json", action="store_true", help="print JSON")

    # `tocha COMMAND --debug` works as well as `tocha --debug COMMAND`.
    for name, command in sub.choices.items():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks" + (" (and the output of every rank, not only rank 0's)"
                                                            if name == "train" else ""))
    return parser


def _convert(text: str, convert, what: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _convert(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _convert(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be an accuracy between 0 and 1, got {text}")
    return value


def _config_help() -> str:
    from tocha.config import help_text

    return help_text()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and not any(e.startswith("-") for e in extra):
        args.args += extra  # key=value after an option (`train data=digits --nproc 2 out=runs/x`): argparse
        #                     stops collecting positionals at the option; the rest belong to the same list
    elif extra:
        parser.parse_args(argv)  # the usual usage message and exit 2 for what is really unknown
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    rank = _rank()
    _setup_logging(quiet=rank > 0 and not args.debug)
    from tocha.launch import write_error_file

    try:
        return COMMANDS[args.command](args, argv)
    except UserError as err:
        write_error_file(str(err), secondary=False)
        if args.debug:
            raise
        if rank == 0:  # every rank meets the same user error; one message is enough
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


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise); only rank 0 talks unless --debug."""
    import os

    text = os.environ.get("RANK", "0")
    return int(text) if text.isdigit() else 0


def _setup_logging(quiet: bool = False) -> None:
    logger = logging.getLogger("tocha")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[rank {_rank()}] " if _rank() > 0 else ""
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False


def _cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha import config

    path, overrides = None, []
    for i, item in enumerate(args.args):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            path = item
        else:
            raise UserError(f"unexpected argument '{item}'", where="tocha train",
                            fix="give at most one config file, first, then key=value overrides")
    if args.resume:
        cfg = _resume_config(args.resume, args.args)
    else:
        cfg = config.load(path, overrides)
    if args.nproc is not None and args.nproc != 1:
        from tocha.launch import check_nproc, launch

        check_nproc(args.nproc, cfg.device)
        from tocha.tasks import info

        if info(cfg.task).one_process:
            raise UserError(f"task={cfg.task} runs in one process", where="tocha train --nproc",
                            fix="drop --nproc (a model of this size trains fastest in one process)")
        return launch(args.nproc, _without_nproc(argv), debug=args.debug)
    from tocha.harness import train
    from tocha.harness.signals import Interrupted

    try:
        result = train(cfg, argv=["tocha", *argv])
    except Interrupted as stop:
        if _rank() == 0:
            print(f"tocha train: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    if _rank() == 0:
        _print_train_result(result)
    return 0


def _cmd_generate(args: argparse.Namespace, argv: list[str]) -> int:
    if args.temperature < 0:
        raise UserError(f"--temperature must be 0 or more, got {args.temperature:g}", where="tocha generate")
    if args.top_k < 0:
        raise UserError(f"--top-k must be 0 (off) or more, got {args.top_k}", where="tocha generate")
    from tocha.recipes.generate import generate

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate(args.run, args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
             checkpoint=args.checkpoint, device=args.device, skip_unknown=args.skip_unknown, on_text=write)
    sys.stdout.write("\n")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The `train` arguments for each launched process: --nproc and global flags removed."""
    out, skip = [], False
    for item in argv[argv.index("train") + 1:]:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc=") and item != "--debug":
            out.append(item)
    return out


def _resume_config(run: str, extra: list[str]):
    from tocha import config
    from tocha import runfolder as rf
    from tocha.engine import resume

    if extra:
        raise UserError(f"--resume takes no other arguments, got {' '.join(extra)}", where="tocha train --resume",
                        fix="resume continues the run exactly as configured; start a new run to change settings")
    path = rf.check_run_dir(run)
    found = resume.latest_valid(path / "checkpoints")
    if found is None or not found.state:
        damaged = f" ({'; '.join(found.skipped)})" if found else ""
        raise UserError(f"'{run}' has no valid checkpoint to resume from{damaged}", where="tocha train --resume",
                        fix=f"start it again with: tocha train {path / rf.CONFIG} out={run} overwrite=true")
    return config.load(path / rf.CONFIG, [f"out={run}", "resume=auto"])


def _print_train_result(result) -> None:
    for line in result.headline[:-1]:
        print(line)
    _print_cost(result, result.headline[-1] if result.headline else "")


def _print_cost(result, speed: str) -> None:
    s = result.summary
    print(f"{speed}, {s['wall_seconds']:.1f} s wall, peak memory {s['peak_memory_mb']:.0f} MB ({s['peak_memory_kind']})")
    if result.run_dir is not None:
        print(f"report: {result.run_dir / 'report.html'}")


def _cmd_eval(args: argparse.Namespace, argv: list[str]) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}", where="tocha eval")
    from tocha.recipes.runs import evaluate_run

    result = evaluate_run(args.run, split=args.split, checkpoint=args.checkpoint, device=args.device,
                          batch_size=args.batch_size)
    m = result.metrics
    print(m.report_text())
    extra = "".join(f"  top-{k} accuracy {v:.4f}" for k, v in m.top_k_accuracy.items())
    print(f"{result.split} ({result.checkpoint} checkpoint): accuracy {m.accuracy:.4f}  loss {result.loss:.4f}{extra}")
    if result.json_path:
        print(f"written: {result.json_path}")
    return 0


def _cmd_predict(args: argparse.Namespace, argv: list[str]) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}", where="tocha predict")
    from tocha.recipes.runs import predict_files

    predictions = predict_files(args.run, args.images, top_k=args.top_k, device=args.device,
                                checkpoint=args.checkpoint)
    if args.json:
        import json

        print(json.dumps([{"file": p.file, "top": [{"class": c, "probability": round(q, 6)} for c, q in p.top]}
                          for p in predictions], indent=2))
        return 0
    width = max(len(p.file) for p in predictions)
    for p in predictions:
        print(f"{p.file:<{width}}  " + "  ".join(f"{c} {q:.3f}" for c, q in p.top))
    return 0


def _cmd_env(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.hardware import describe_environment, plan

    info = describe_environment()
    hw_memory, hw_files = plan(file_data=False), plan(file_data=True)
    if args.json:
        import json

        print(json.dumps({**info, "choices": {"in_memory_data": hw_memory.__dict__, "file_data": hw_files.__dict__}},
                         indent=2, default=str))
        return 0
    for key, value in info.items():
        print(f"{key:<17} {value if value is not None else 'not installed'}")
    print("\nwhat tocha would choose (auto), for in-memory data:")
    for line in hw_memory.lines():
        print(f"  {line}")
    print("for file datasets (image folders), differing choices:")
    for old, new in zip(hw_memory.lines(), hw_files.lines()):
        if old != new:
            print(f"  {new}")
    return 0


def _cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.export import export_run

    result = export_run(args.run, args.format, out=args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                        overwrite=args.overwrite, samples=args.samples, precision=args.precision)
    p = result.parity
    print(f"written: {result.path} ({result.bytes / 2**20:.2f} MB, {result.format})")
    print(f"parity on {p.samples} test images: max abs logit difference {p.max_abs_diff:.2e} "
          f"(allowed {p.tolerance:g}), top-1 agreement {p.top1_agreement:.2%} (required {p.min_agreement:.0%})")
    return 0


def _cmd_compress(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.compress import compress_run, table

    if not 0 <= args.max_accuracy_drop <= 100:
        raise UserError(f"--max-accuracy-drop {args.max_accuracy_drop:g} is out of range", where="tocha compress",
                        allowed="0 to 100 (percentage points)")
    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be 0 or more, got {args.finetune_epochs}", where="tocha compress")
    report = compress_run(args.run, out=args.out, prune=args.prune, prune_method=args.prune_method,
                          prune_target=args.prune_target, prune_scope=args.prune_scope, prune_steps=args.prune_steps,
                          prune_round_to=args.prune_round_to,
                          finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, quantize=args.quantize,
                          calibration_batches=args.calibration_batches, calibration=args.calibration,
                          max_accuracy_drop=args.max_accuracy_drop, batch=args.batch,
                          quantize_edges=args.quantize_edges, overwrite=args.overwrite)
    print(table(report))
    return 0


def _cmd_distill(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.harness.signals import Interrupted
    from tocha.recipes.distill import distill_run

    overrides = [*args.student, *args.args]
    if bad := [a for a in overrides if "=" not in a]:
        raise UserError(f"unexpected argument '{bad[0]}'", where="tocha distill",
                        fix="student settings are key=value, e.g. model=cnn epochs=5 out=runs/kd")
    try:
        result = distill_run(args.teacher, overrides, temperature=args.temperature, alpha=args.alpha,
                             cache=args.cache, argv=["tocha", *argv])
    except Interrupted as stop:
        print(f"tocha distill: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    _print_train_result(result)
    return 0


def _cmd_bench_model(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.measure import bench_artifacts, record_in_runs, rows_json, table

    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise UserError(f"--batch '{args.batch}' is not a list of batch sizes", where="tocha bench-model --batch",
                        fix="e.g. --batch 1,64")
    if args.json and Path(args.json).exists():
        raise UserError(f"'{args.json}' already exists", where="tocha bench-model --json", fix="choose a new file")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runtimes = tuple(r.strip() for r in args.runtime.split(",") if r.strip())
    rows = bench_artifacts(args.artifacts, batches, calls=args.calls, threads=args.threads, runtimes=runtimes)
    print(table(rows))
    for path in record_in_runs(rows, args.artifacts):
        print(f"written: {path} (and a table in {path.parent / 'report.html'})")
    if args.json:
        Path(args.json).write_text(rows_json(rows))
        print(f"written: {args.json}")
    return 0


def _cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.bench.suite import main as bench_main

    return bench_main(args)


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "env": _cmd_env, "bench": _cmd_bench,
            "export": _cmd_export, "generate": _cmd_generate, "compress": _cmd_compress, "distill": _cmd_distill,
            "bench-model": _cmd_bench_model}


if __name__ == "__main__":
    sys.exit(main())
