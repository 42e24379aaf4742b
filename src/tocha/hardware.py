"""Hardware-dependent defaults, decided in one place and printed with their reasons.

Everything that depends on the machine (device, precision, DataLoader workers, pin_memory,
CPU threads) is resolved here from what is present and what the user asked for; the result is
a plain value passed down explicitly (STYLE habit 6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tocha.errors import UserError

AUTO = "auto"


@dataclass(frozen=True)
class HardwarePlan:
    device: str
    precision: str
    workers: int
    pin_memory: bool
    threads: int
    reasons: dict[str, str]

    def lines(self) -> list[str]:
        """One line per choice with its reason, for the start of a run and `tocha env`."""
        values = {
            "device": self.device,
            "precision": self.precision,
            "workers": self.workers,
            "pin_memory": self.pin_memory,
            "threads": self.threads,
        }
        return [f"{k:<11} {v!s:<8} {self.reasons[k]}" for k, v in values.items()]

    def summary_line(self) -> str:
        """The choices on one line (notebooks); a reason is kept only where it is a warning."""
        line = f"hardware   {self.device}, {self.precision}, {self.threads} thread(s), {self.workers} worker(s)"
        slow = self.reasons.get("precision", "")
        return line + (f" - precision {slow}" if "slow" in slow else "")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan(
    device: str = AUTO,
    precision: str = AUTO,
    workers: int | str = AUTO,
    threads: int | str = AUTO,
    *,
    file_data: bool = True,
) -> HardwarePlan:
    """Resolve every 'auto' against the machine; explicit values are checked, then kept."""
    import torch

    reasons: dict[str, str] = {}
    dev, reasons["device"] = _device(device, torch)
    kind = dev.split(":")[0]

    if precision == AUTO:
        if kind == "cuda" and torch.cuda.is_bf16_supported():
            prec, reasons["precision"] = "bf16", "CUDA device supports bfloat16: autocast bf16, no loss scaling needed"
        elif kind == "cuda":
            prec, reasons["precision"] = "fp16", "CUDA device without bfloat16: autocast fp16 with a GradScaler"
        else:
            prec, reasons["precision"] = "fp32", f"on {kind}, mixed precision rarely speeds up training"
    else:
        prec, reasons["precision"] = precision, "set by the user"
        if precision == "fp16" and kind == "cpu":
            reasons["precision"] += " (fp16 on CPU is slow; bf16 is the usual CPU choice)"
        if precision == "bf16" and kind == "cpu":
            lacks = cpu_lacks_bf16()
            if lacks:
                reasons["precision"] += f" (slow here: {lacks}; bf16 is emulated, often ~4x slower than fp32)"

    cpus = usable_cpus()
    n_gpus = torch.cuda.device_count() if kind == "cuda" else 0
    if workers != AUTO:
        n_workers, reasons["workers"] = int(workers), "set by the user"
    elif not file_data:
        n_workers, reasons["workers"] = 0, "data is held in memory: batches are tensor slices, no loader processes"
    elif n_gpus:
        n_workers = min(4 * n_gpus, cpus)
        reasons["workers"] = f"4 per GPU x {n_gpus} GPU(s), capped by {cpus} usable CPU cores"
    else:
        # On CPU the workers compete with the training threads for the same cores.
        n_workers = max(1, min(4, cpus // 2))
        reasons["workers"] = f"half of {cpus} usable CPU cores (the rest train), at most 4"

    pin = kind == "cuda" and file_data
    reasons["pin_memory"] = (
        "CUDA: page-locked host buffers allow asynchronous copies"
        if pin
        else "only useful for host-to-CUDA copies of loader batches"
    )

    if threads == AUTO:
        n_threads = cpus
        reasons["threads"] = (
            f"{cpus} usable CPU cores; training measures 1..{cpus} on its model and keeps the fastest"
            if kind == "cpu"
            else f"{cpus} usable CPU cores (host-side work only)"
        )
    else:
        n_threads, reasons["threads"] = int(threads), "set by the user"
    return HardwarePlan(dev, prec, n_workers, pin, n_threads, reasons)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # the x86 instructions that compute in bfloat16


def cpu_lacks_bf16(cpuinfo: str | None = None) -> str:
    """What this CPU lacks for fast bf16, or "" when it has it (or when it cannot be told: not Linux x86)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return ""
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags_line is None:  # ARM says "Features"; its bf16 support is not judged here
        return ""
    flags = set(flags_line.partition(":")[2].split())
    if flags & set(BF16_CPU_FLAGS):
        return ""
    return "the CPU has neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo"


def _device(requested: str, torch) -> tuple[str, str]:
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == AUTO:
        if has_cuda:
            return "cuda", f"CUDA available ({torch.cuda.get_device_name(0)})"
        if has_mps:
            return "mps", "Apple MPS available, no CUDA"
        return "cpu", "no CUDA or MPS device found"
    kind, _, index = requested.partition(":")
    allowed = "auto, cpu, cuda, cuda:N, mps"
    if kind == "cpu" and not index:
        return "cpu", "set by the user"
    if kind == "cuda" and (not index or index.isdigit()):
        if not has_cuda:
            raise UserError(
                "device=cuda was asked for but no CUDA device is available",
                where="config key device",
                allowed=allowed,
                fix="use device=auto or device=cpu",
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(
                f"device={requested} but only {torch.cuda.device_count()} CUDA device(s) exist",
                where="config key device",
                fix=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
            )
        return requested, "set by the user"
    if kind == "mps" and not index:
        if not has_mps:
            raise UserError(
                "device=mps was asked for but MPS is not available",
                where="config key device",
                allowed=allowed,
                fix="use device=auto or device=cpu",
            )
        return "mps", "set by the user"
    raise UserError(f"unknown device '{requested}'", where="config key device", allowed=allowed)


def describe_environment() -> dict[str, object]:
    """Versions and devices, for `tocha env` and the run folder's env.json."""
    import platform
    import sys

    import torch

    from tocha._version import __version__

    info: dict[str, object] = {
        "tocha": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_cores_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
    }
    from importlib.metadata import PackageNotFoundError, version

    # Versions from package metadata: importing these packages would cost seconds.
    for name in ("torchvision", "numpy", "scikit-learn", "safetensors", "tensorboard", "onnx", "onnxruntime"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


def inference_precision(trained_precision: str, trained_device: str | None, device: str) -> str:
    """The one rule for using a finished run: its own precision on the kind of device it trained on
    (bf16 on CUDA, say), fp32 on any other kind. Device kinds compare without the index (cuda:1 = cuda)."""
    if trained_device is None:  # a weights file alone: trust its precision off the CPU only
        return trained_precision if device.split(":")[0] != "cpu" else "fp32"
    return trained_precision if device.split(":")[0] == trained_device.split(":")[0] else "fp32"
