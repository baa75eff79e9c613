"""The whole machine's CPU use over a run, sampled from Linux's /proc/stat: where a run leaves cores idle.

A wall-clock ratio says how much longer a run took than its work; this says whether the cores were busy meanwhile
(a start-up that keeps every core busy can only shrink by doing less, one that waits can overlap its waiting).
It counts every process on the machine, so a run's figures mean most on an otherwise quiet machine.
"""

from __future__ import annotations

import bisect
import os
import time

from _sampler import PeriodicSampler

PROC_STAT = "/proc/stat"


def cpu_ticks() -> tuple[int, int] | None:
    """All and idle (idle + iowait) CPU ticks since boot, summed over the cores; None where /proc/stat is absent."""
    try:
        with open(PROC_STAT) as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is within user)
    return sum(ticks), ticks[3] + ticks[4]


class CpuSampler(PeriodicSampler[tuple[int, int]]):
    """`cpu_ticks` every `interval` seconds while in the `with` block (nothing where /proc/stat is absent); `busy(spans)`
    then gives the share of the machine's core-time that was busy over spans of `time.time()` instants."""

    def __init__(self, interval: float = 0.25) -> None:
        available = cpu_ticks() is not None
        super().__init__(cpu_ticks, interval, clock=time.time, enabled=available, at_edges=True)
        self._tick = os.sysconf("SC_CLK_TCK") if available else 100

    def busy(self, spans: list[tuple[float, float]]) -> dict | None:
        """Seconds, busy share of all cores and idle core-seconds over `spans` (pairs of epoch seconds, summed), or
        None when nothing was sampled or the spans are empty."""
        spans = [(start, end) for start, end in spans if end > start]
        if len(self.samples) < 2 or not spans:
            return None
        times = [at for at, _ in self.samples]

        def ticks_at(when: float) -> tuple[float, float]:
            """The (all, idle) counters at `when`, linear between the samples around it (clamped to the first and
            last)."""
            i = bisect.bisect_left(times, when)
            if i in (0, len(times)):
                return self.samples[min(i, len(times) - 1)][1]
            (t0, before), (t1, after) = self.samples[i - 1], self.samples[i]
            share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
            return before[0] + share * (after[0] - before[0]), before[1] + share * (after[1] - before[1])

        all_ticks = idle_ticks = 0.0
        for start, end in spans:
            (all_start, idle_start), (all_end, idle_end) = ticks_at(start), ticks_at(end)
            all_ticks += all_end - all_start
            idle_ticks += idle_end - idle_start
        if all_ticks <= 0:
            return None
        return {"seconds": sum(end - start for start, end in spans), "busy_share": 1.0 - idle_ticks / all_ticks,
                "idle_core_seconds": idle_ticks / self._tick}
