"""The whole machine's CPU use over a run, sampled from Linux's /proc/stat: where a run leaves cores idle.

A wall-clock ratio says how much longer a run took than its work; this says whether the cores were busy meanwhile
(a start-up that keeps every core busy can only shrink by doing less, one that waits can overlap its waiting).
It counts every process on the machine, so a run's figures mean most on an otherwise quiet machine.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

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


class CpuSampler:
    """Samples `cpu_ticks` every `interval` seconds in a thread while used as a context manager; `busy(spans)`
    then gives the share of the machine's core-time that was busy over spans of `time.time()` instants."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.available = cpu_ticks() is not None
        self._times: list[float] = []
        self._all: list[float] = []
        self._idle: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK") if self.available else 100

    def __enter__(self) -> CpuSampler:
        if self.available:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        ticks = cpu_ticks()
        if ticks is not None:
            self._times.append(time.time())
            self._all.append(float(ticks[0]))
            self._idle.append(float(ticks[1]))

    def _at(self, series: list[float], when: float) -> float:
        """A cumulative counter at `when`, linear between the samples around it (clamped to the first and last)."""
        i = bisect.bisect_left(self._times, when)
        if i == 0:
            return series[0]
        if i == len(self._times):
            return series[-1]
        t0, t1 = self._times[i - 1], self._times[i]
        share = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        return series[i - 1] + share * (series[i] - series[i - 1])

    def busy(self, spans: list[tuple[float, float]]) -> dict | None:
        """Seconds, busy share of all cores and idle core-seconds over `spans` (pairs of epoch seconds, summed), or
        None when nothing was sampled or the spans are empty."""
        spans = [(start, end) for start, end in spans if end > start]
        if len(self._times) < 2 or not spans:
            return None
        all_ticks = sum(self._at(self._all, end) - self._at(self._all, start) for start, end in spans)
        idle_ticks = sum(self._at(self._idle, end) - self._at(self._idle, start) for start, end in spans)
        if all_ticks <= 0:
            return None
        return {"seconds": sum(end - start for start, end in spans), "busy_share": 1.0 - idle_ticks / all_ticks,
                "idle_core_seconds": idle_ticks / self._tick}
