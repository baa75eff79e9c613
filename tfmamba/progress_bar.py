"""Progress bars for long work that suit both a terminal and a log file."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0  # a log file (nohup, a batch job's output) gets a progress line this often


class _Lines:
    """A log file's side of a tqdm bar: a redraw (`\\r` + the bar) becomes a line of its own, at most one per
    `interval` seconds however often the bar is refreshed (`set_postfix` redraws it every step), and the last one
    when the bar closes."""

    def __init__(self, stream: IO[str], interval: float) -> None:
        self._stream = stream
        self._interval = interval
        self._written_at = -math.inf
        self._pending: str | None = None

    def write(self, text: str) -> None:
        if text.startswith("\r"):
            bar = text[1:].rstrip(" ")
            if not bar:  # cleared (for a message written above it, or on closing without leaving it)
                self._pending = None
            elif time.monotonic() - self._written_at >= self._interval:
                self._emit(bar)
            else:
                self._pending = bar
        elif text == "\n":  # the bar closes, leaving its last state
            if self._pending is not None:
                self._emit(self._pending)
        elif text:
            self._stream.write(text)

    def _emit(self, bar: str) -> None:
        self._stream.write(bar + "\n")
        self._written_at = time.monotonic()
        self._pending = None

    def __getattr__(self, name: str) -> Any:  # flush, encoding, ... as the stream has them
        return getattr(self._stream, name)


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A tqdm bar on stderr. In a terminal it redraws as usual; when stderr is not a terminal it writes a line every
    LOG_INTERVAL_SECONDS instead of redrawing ten times a second, so an hours-long feature extraction leaves a
    readable log of its progress rather than megabytes of carriage returns."""
    if sys.stderr.isatty():
        return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **options)
    return tqdm(iterable, file=_Lines(sys.stderr, LOG_INTERVAL_SECONDS), mininterval=LOG_INTERVAL_SECONDS,
                maxinterval=LOG_INTERVAL_SECONDS, **options)
