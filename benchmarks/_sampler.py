"""A value read at a fixed interval in a thread while a `with` block runs: how busy a GPU or the CPUs were over time."""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class PeriodicSampler(Generic[T]):
    """Calls `read()` every `interval` seconds in a thread while in the `with` block and keeps `samples`, (`clock()`,
    value) pairs of the reads that returned a value; with `at_edges`, also once as the block opens and as it closes
    (so a counter can be read at any instant inside it). Disabled, it samples nothing."""

    def __init__(self, read: Callable[[], T | None], interval: float, clock: Callable[[], float] = time.perf_counter,
                 enabled: bool = True, at_edges: bool = False) -> None:
        self.interval, self.enabled, self.at_edges = interval, enabled, at_edges
        self.samples: list[tuple[float, T]] = []
        self._read, self._clock = read, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        value = self._read()
        if value is not None:
            self.samples.append((self._clock(), value))

    def __enter__(self) -> PeriodicSampler[T]:
        if self.enabled:
            if self.at_edges:
                self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            if self.at_edges:
                self._sample()
