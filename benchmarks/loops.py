"""The `tocha bench` tables recorded in BENCHMARKS.md: the seed MLP and the seed CNN, one after the other.

Each is exactly a `tocha bench` command (see its --help); this script only runs the two with the
settings used for BENCHMARKS.md so the numbers can be reproduced with one command.

    python benchmarks/loops.py            # about 15 minutes on a 2-core CPU
    python benchmarks/loops.py --devices cpu,cuda
"""

from __future__ import annotations

import argparse
import sys

from tocha.cli import main as tocha

RUNS = [
    ["bench", "--model", "mlp", "--epochs", "2", "--repeats", "5"],
    ["bench", "--model", "cnn", "--epochs", "1", "--repeats", "3"],
]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="auto")
    args = parser.parse_args()
    status = 0
    for run in RUNS:
        print(f"\n$ tocha {' '.join(run)} --devices {args.devices}", flush=True)
        status |= tocha([*run, "--devices", args.devices])
    sys.exit(status)
