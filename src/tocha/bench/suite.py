"""Run the runners interleaved, after a warm-up, and report medians and ratios.

Every runner trains the same model (same initial weights) with the same batch size, optimizer,
learning rate, epochs and seed. Repeats rotate the runner order so that no runner always goes
first (a cold cache) or last (a warm machine).
"""

from __future__ import annotations

import gc
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tocha.bench.runners import RUNNERS, Measure
from tocha.bench.workload import Workload, load_workload
from tocha.errors import UserError

QUICK_TRAIN_SAMPLES = 6000
WARMUP_STEPS = 20


@dataclass(frozen=True)
class Summary:
    runner: str
    device: str
    samples_per_second: float | None
    ms_per_step: float | None
    accuracy: float | None
    time_to_target: float | None
    peak_mb: float | None
    repeats: int
    note: str = ""


def parse_devices(text: str) -> list[str]:
    wanted = [d.strip() for d in text.split(",") if d.strip()]
    allowed = ("auto", "cpu", "cuda")
    bad = [d for d in wanted if d not in allowed]
    if bad or not wanted:
        raise UserError(
            f"unknown device(s) {', '.join(bad) or repr(text)}",
            where="tocha bench --devices",
            allowed="a comma-separated list of cpu, cuda, auto",
            fix="e.g. --devices cpu,cuda",
        )
    devices = []
    for d in wanted:
        d = ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d
        if d not in devices:
            devices.append(d)
    return devices


def parse_runners(text: str) -> list[str]:
    wanted = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in wanted if r not in RUNNERS]
    if bad or not wanted:
        raise UserError(
            f"unknown runner(s) {', '.join(bad) or repr(text)}",
            where="tocha bench --runners",
            allowed=", ".join(RUNNERS),
            fix="e.g. --runners raw,tocha",
        )
    return wanted


def check_json_path(path: Path) -> None:
    """Before any training: the JSON file must be new and its folder must exist."""
    if path.exists():
        raise UserError(
            f"'{path}' already exists",
            where="tocha bench --json",
            fix="give a new file name, or move the old file away",
        )
    if not path.parent.is_dir():
        raise UserError(
            f"folder '{path.parent}' does not exist",
            where="tocha bench --json",
            fix="create the folder first, or write the file elsewhere",
        )


def _median(values: list[float | None]) -> float | None:
    """The median of the repeats; None when most repeats have no value (e.g. never reached the target)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) * 2 > len(values) else None


def summarise(measures: list[Measure], target: float) -> Summary:
    first = measures[0]
    ran = [m for m in measures if m.ran]
    if not ran:
        return Summary(first.runner, first.device, None, None, None, None, None, 0, first.note)
    return Summary(
        runner=first.runner,
        device=first.device,
        samples_per_second=statistics.median(m.samples / m.train_seconds for m in ran),
        ms_per_step=statistics.median(1e3 * m.train_seconds / m.steps for m in ran),
        accuracy=statistics.median(m.accuracy for m in ran),
        time_to_target=_median([m.time_to(target) for m in ran]),
        peak_mb=_median([m.peak_mb for m in ran]),
        repeats=len(ran),
        note=first.note,
    )


def run_device(
    w: Workload, device: str, runners: list[str], repeats: int, *, warmup: bool = True, echo=print
) -> list[Summary]:
    from tocha.bench.runners import PeakMemory

    dev = torch.device(device)
    if warmup:  # imports, kernel selection, allocator pools: paid here, not by whichever runner goes first
        small = w.subset(min(len(w.y_train), WARMUP_STEPS * w.batch_size))
        for name in runners:
            RUNNERS[name](small, dev)
    results: dict[str, list[Measure]] = {name: [] for name in runners}
    for r in range(repeats):
        k = r % len(runners)
        for name in runners[k:] + runners[:k]:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            with PeakMemory(dev) as memory:
                m = RUNNERS[name](w, dev)
            m.peak_mb = memory.peak_mb
            results[name].append(m)
            if m.ran:
                echo(
                    f"  repeat {r + 1}/{repeats} {device} {name:<9} {m.train_seconds:7.2f} s  "
                    f"test accuracy {m.accuracy:.4f}"
                )
    return [summarise(results[name], w.target) for name in runners]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(summaries: list[Summary], target: float) -> str:
    base = {s.device: s for s in summaries if s.runner == "raw" and s.ms_per_step}
    tut = {s.device: s for s in summaries if s.runner == "tutorial" and s.samples_per_second}
    header = (
        f"{'device':<6} {'runner':<10} {'samples/s':>11} {'ms/step':>9} {'step/raw':>9} {'x tutorial':>11} "
        f"{'test acc':>9} {'to ' + format(target, '.2f'):>9} {'peak MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        if s.ms_per_step is None:
            lines.append(f"{s.device:<6} {s.runner:<10} {s.note or 'did not run'}")
            continue
        over_raw = s.ms_per_step / base[s.device].ms_per_step if s.device in base else None
        speedup = s.samples_per_second / tut[s.device].samples_per_second if s.device in tut else None
        lines.append(
            f"{s.device:<6} {s.runner:<10} {s.samples_per_second:>11,.0f} {s.ms_per_step:>9.3f} "
            f"{_fmt(over_raw, '.2f', 'x'):>9} {_fmt(speedup, '.1f', 'x'):>11} {_fmt(s.accuracy, '.4f'):>9} "
            f"{_fmt(s.time_to_target, '.2f', ' s'):>9} {_fmt(s.peak_mb, ',.0f'):>8}"
        )
    by = {(s.runner, s.device): s for s in summaries}
    for runner in dict.fromkeys(s.runner for s in summaries):
        cpu, cuda = by.get((runner, "cpu")), by.get((runner, "cuda"))
        if cpu and cuda and cpu.samples_per_second and cuda.samples_per_second:
            lines.append(
                f"cuda vs cpu, {runner}: {cuda.samples_per_second / cpu.samples_per_second:.1f}x the samples/s"
            )
    return "\n".join(lines)


def describe(w: Workload, threads: int, repeats: int) -> str:
    c, h = w.x_train.shape[1], w.x_train.shape[2]
    model = (
        f"seed MLP {c * h * h}-32-{w.classes}"
        if w.model == "mlp"
        else f"seed CNN (conv5x5x32, fc 256, dropout, log-softmax) on {c}x{h}x{h}"
    )
    return (
        f"{w.name}: {len(w.y_train):,} train / {len(w.y_test):,} test images; {model}; batch {w.batch_size}, "
        f"SGD lr {w.lr:g}, {w.epochs} epoch(s), seed {w.seed}\n"
        f"torch {torch.__version__}, {threads} CPU thread(s); {repeats} repeat(s), interleaved after a warm-up; "
        f"medians"
    )


def main(args) -> int:
    devices = parse_devices(args.devices)
    runners = parse_runners(args.runners)
    if args.json:
        check_json_path(Path(args.json))
    missing = [d for d in devices if d == "cuda" and not torch.cuda.is_available()]
    if missing and len(devices) == 1:
        raise UserError(
            "--devices cuda but no CUDA device is available",
            where="tocha bench --devices",
            fix="use --devices cpu, or auto",
        )
    devices = [d for d in devices if d not in missing]
    epochs = 1 if args.quick and args.epochs is None else (args.epochs or 2)
    repeats = 1 if args.quick and args.repeats is None else (args.repeats or 3)
    train_samples = args.train_samples or (QUICK_TRAIN_SAMPLES if args.quick else None)
    data = args.data
    if data is None:
        from tocha.data.fashion_mnist import find_files

        data = "fashion-mnist" if find_files(None) else "digits"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    w = load_workload(
        data,
        args.model,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        target=args.target,
        train_samples=train_samples,
        seed=args.seed,
    )
    print(describe(w, threads, repeats))
    if missing:
        print("note: no CUDA device here; running on the CPU only")
    summaries: list[Summary] = []
    for device in devices:
        summaries += run_device(w, device, runners, repeats, warmup=not args.no_warmup)
    print()
    print(table(summaries, w.target))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "workload": describe(w, threads, repeats),
                    "target": w.target,
                    "results": [asdict(s) for s in summaries],
                },
                indent=2,
            )
        )
        print(f"written: {args.json}")
    return 0
