"""`tocha export`: a run's best model as ONNX, torch.export (pt2), TorchScript or safetensors, parity-checked."""

from __future__ import annotations

import argparse

from tocha.cli._common import one_of, positive_int

# The same names as tocha.deploy.export.FORMATS / PRECISIONS (that module imports torch; a test keeps them equal).
FORMATS = ("onnx", "pt2", "torchscript", "safetensors")
PRECISIONS = ("fp32", "fp16", "bf16")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a run's best model (ONNX, PT2, TorchScript, safetensors) with a parity check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the run's best model as a deployable file with the class names and normalisation "
        "embedded, then check it against the PyTorch model on up to --samples test images: max abs "
        "logit difference (<= 1e-4) and top-1 agreement (100%), printed and stored in "
        "FILE.parity.json. A file that fails the check is not written.",
        epilog="examples:\n  tocha export runs/cnn                       # runs/cnn/export/model.onnx\n"
        "  tocha export runs/cnn --format pt2 --out cnn.pt2\n"
        "  tocha predict runs/cnn/export/model.onnx shirt.png   # the file alone is enough",
    )
    p.add_argument("run", help="run folder written by 'tocha train'")
    p.add_argument(
        "--format",
        type=one_of("export format", FORMATS),
        default="onnx",
        help="onnx (default), pt2 (torch.export), torchscript, safetensors",
    )
    p.add_argument("--out", help="output file (default RUN/export/model.<ext>)")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a free batch dimension (default); --no-dynamic-batch fixes it at 1",
    )
    p.add_argument("--samples", type=positive_int, default=512, help="test images for the parity check (default 512)")
    p.add_argument(
        "--precision",
        type=one_of("precision", PRECISIONS),
        default="fp32",
        help="fp32 (default); fp16 (onnx, pt2, torchscript) or bf16 (pt2, torchscript) halve the file "
        "for GPUs; parity then allows a 0.1 (fp16) / 0.5 (bf16) logit difference and 99%%/98%% "
        "top-1 agreement",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from tocha.deploy.export import export_run

    result = export_run(
        args.run,
        args.format,
        out=args.out,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        overwrite=args.overwrite,
        samples=args.samples,
        precision=args.precision,
    )
    p = result.parity
    print(f"written: {result.path} ({result.bytes / 2**20:.2f} MB, {result.format})")
    print(
        f"parity on {p.samples} test images: max abs logit difference {p.max_abs_diff:.2e} "
        f"(allowed {p.tolerance:g}), top-1 agreement {p.top1_agreement:.2%} (required {p.min_agreement:.0%})"
    )
    return 0
