"""Timing helpers shared by the benchmarks: warm-up, CUDA synchronisation, medians or interleaved minima of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs, synchronising CUDA around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def interleaved_seconds(fns: Mapping[str, Callable[[], object]], device: torch.device, warmup: int = 1,
                        repeats: int = 5, repeats_of: Mapping[str, int] | None = None,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best (minimum) time of each fn over `repeats` rounds in which the fns take turns.

    On a shared machine, timing one candidate after another lets a burst of other work land on one
    of them only; taking turns exposes all to the same load, and the minimum is the run least
    disturbed by it. `repeats_of` gives slow candidates fewer rounds (they drop out early). `clock`
    is wall time by default; `time.thread_time` with torch on one thread counts only the CPU time
    the work itself took, which other processes' load does not stretch.
    """
    counts = {name: (repeats_of or {}).get(name, repeats) for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(max(counts.values(), default=0)):
        for name, fn in fns.items():
            if round_index >= counts[name]:
                continue
            start = clock()
            fn()
            sync(device)
            times[name].append(clock() - start)
    return {name: min(values) for name, values in times.items()}
