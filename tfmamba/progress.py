"""Progress bars for long work that suit both a terminal and a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0  # a log file (nohup, a batch job's output) gets a progress line this often


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A tqdm bar on stderr. In a terminal it redraws as usual; when stderr is not a terminal it updates every
    LOG_INTERVAL_SECONDS instead of ten times a second, so an hours-long feature extraction leaves a readable log
    with its progress rather than megabytes of carriage returns."""
    if not sys.stderr.isatty():
        options = {"mininterval": LOG_INTERVAL_SECONDS, "maxinterval": LOG_INTERVAL_SECONDS} | options
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **options)
