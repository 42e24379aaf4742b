"""Pick the CPU thread count by timing a few real training steps.

More threads is not always faster: a tiny model spends its step in per-op overhead, and on a
loaded machine extra threads wait for cores. So for `threads=auto` on the CPU, tocha times the
actual forward+backward at each candidate count and keeps the fastest (within 3%, the fewest).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

ROUNDS = 3  # candidates are timed round-robin, so a burst of noise hits them all
STEPS_PER_ROUND = 4
SLOW_STEP_SECONDS = 0.2  # a step this slow is compute-bound: every core helps and measuring costs too much


def candidates(cpus: int) -> list[int]:
    """1, 2, 4, ... up to `cpus`, and `cpus` itself."""
    out, n = [], 1
    while n < cpus:
        out.append(n)
        n *= 2
    return out + [cpus]


def choose_threads(
    step: Callable[[], None], cpus: int, *, clock: Callable[[], float] = time.perf_counter
) -> tuple[int, str]:
    """(threads, reason): the fastest candidate for `step`, a callable running one training step."""
    options = candidates(cpus)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(cpus)
        step(), step()  # warm-up: first-call allocations and kernel selection must not be timed
        first = float("inf")
        for _ in range(2):  # a second look before calling it slow: a burst of load must not look compute-bound
            t = clock()
            step()
            first = min(first, clock() - t)
            if first <= SLOW_STEP_SECONDS:
                break
        if len(options) == 1:
            return cpus, f"{cpus} usable CPU core"
        if first > SLOW_STEP_SECONDS:
            return cpus, f"all {cpus} usable cores: a step takes {first:.2f} s, compute-bound"
        times: dict[int, list[float]] = {n: [] for n in options}
        for _ in range(ROUNDS):
            for n in options:
                torch.set_num_threads(n)
                step()
                for _ in range(STEPS_PER_ROUND):
                    t = clock()
                    step()
                    times[n].append(clock() - t)
    finally:
        torch.set_num_threads(previous)
    medians = {n: statistics.median(v) for n, v in times.items()}
    fastest = min(medians.values())
    best = min(n for n, m in medians.items() if m <= fastest * 1.03)
    measured = ", ".join(f"{n}: {m * 1e3:.2f}" for n, m in medians.items())
    return best, f"measured ms/step by thread count ({measured})"


def training_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[], None]:
    """A forward+backward on `model`'s copy, leaving the real model (weights, BatchNorm stats) untouched."""
    import copy

    probe = copy.deepcopy(model)
    probe.train()

    def step() -> None:
        # Dropout in the probe must not move the global RNG: a run's results would then depend on how
        # many probe steps this machine's timing allowed.
        with torch.random.fork_rng(devices=[]):
            loss = loss_fn(probe(x), y)
            loss.backward()
        probe.zero_grad(set_to_none=True)

    return step
