"""Side-by-side latency of two ONNX files, each timing in a fresh process.

A verdict "B is 1.4x faster than A" must come from one timing in which A and B ran under the
same conditions. `paired` alternates rounds of A and B so that a change in the machine's load
hits both alike, and repeats a timing whose rounds disagree (then reports it undecided rather
than deciding on it).

`tocha compress --goal` times every candidate in a fresh Python process (`fresh_pairing`): in
the process that had just fine-tuned a pruned model, candidates timed up to 20x slower than the
same two files in a new process (torch's worker threads, and every ONNX Runtime session opened
so far with its own spinning thread pool, compete for the same cores). A fresh process holds two
sessions and nothing else, with thread spinning off so that neither session's idle threads eat
the other's time.

This module imports neither torch nor tocha's heavy parts: `python -m tocha.deploy.timing A B
--batch 64 --shape 1,28,28` prints one Pairing as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WARMUP_CALLS = 5


@dataclass(frozen=True)
class Pairing:
    """One side-by-side timing: the numbers a verdict and the table beside it both come from."""

    a_ms: float  # median over all rounds
    b_ms: float
    b_p90_ms: float
    round_ratios: tuple[float, ...]  # a/b per round: > 1 means b is faster in that round
    decided: bool  # the rounds agree on which is faster (or on "the same")
    attempts: int
    a_p90_ms: float | None = None

    @property
    def speedup(self) -> float:
        return self.a_ms / self.b_ms


def _agree(ratios: list[float], tie: float = 0.05) -> bool:
    """At least 3 of 4 rounds on the same side of 1 (or all within `tie` of it): a decidable timing."""
    faster = sum(r > 1 + tie for r in ratios)
    slower = sum(r < 1 - tie for r in ratios)
    return max(faster, slower) >= 0.75 * len(ratios) or faster + slower == 0


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def paired(a: Callable, b: Callable, x, rounds: int = 8, calls: int = 5, attempts: int = 3) -> Pairing:
    """`a` and `b` timed in alternating rounds; repeated (up to `attempts` times) while the rounds
    disagree about which is faster, then reported as undecided rather than decided on."""
    for _ in range(WARMUP_CALLS):
        a(x), b(x)
    for attempt in range(1, attempts + 1):
        times: tuple[list[float], list[float]] = ([], [])
        ratios = []
        for r in range(rounds):
            this: tuple[list[float], list[float]] = ([], [])
            for which, predict in ((0, a), (1, b)) if r % 2 == 0 else ((1, b), (0, a)):
                for _ in range(calls):
                    t = time.perf_counter()
                    predict(x)
                    this[which].append((time.perf_counter() - t) * 1e3)
            ratios.append(statistics.median(this[0]) / statistics.median(this[1]))
            times[0].extend(this[0]), times[1].extend(this[1])
        if _agree(ratios) or attempt == attempts:
            break
    return Pairing(
        statistics.median(times[0]),
        statistics.median(times[1]),
        _p90(times[1]),
        tuple(ratios),
        _agree(ratios),
        attempt,
        _p90(times[0]),
    )


def _session(path: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    half = session.get_inputs()[0].type == "tensor(float16)"
    return lambda x: session.run(None, {name: x.astype("float16") if half else x})


def time_files(
    a: str, b: str, batch: int, shape: tuple[int, ...], threads: int | None = None, seed: int = 0
) -> Pairing:
    """The pairing of two ONNX files on one random batch, in this process."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)
    return paired(_session(a, threads), _session(b, threads), x)


def fresh_pairing(
    a: Path, b: Path, batch: int, shape: tuple[int, ...], threads: int | None = None, timeout_s: float = 600
) -> Pairing:
    """`time_files` in a new Python process (see the module's docstring for why)."""
    command = [sys.executable, "-m", "tocha.deploy.timing", str(a), str(b), "--batch", str(batch)]
    command += ["--shape", ",".join(map(str, shape))] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing {Path(b).name} beside {Path(a).name} failed: {last}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    return Pairing(**{**fields, "round_ratios": tuple(fields["round_ratios"])})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tocha.deploy.timing", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="reference ONNX file")
    parser.add_argument("b", help="candidate ONNX file")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shape", default="1,28,28", help="one input's shape, e.g. 1,28,28")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    pairing = time_files(args.a, args.b, args.batch, shape, args.threads)
    print(json.dumps(dataclasses.asdict(pairing)))


if __name__ == "__main__":
    main()
