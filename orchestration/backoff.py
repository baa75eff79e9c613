"""Calling a service again while it is briefly away: the MLflow tracking server, the Optuna study's database.

`call_with_backoff` retries a call whose error passes `transient`, waiting 1 s, 2 s, 4 s ... up to
`MAX_BACKOFF_SECONDS` between attempts, until `budget_s` would be exceeded; then the last error goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, TypeVar

from tfmamba.errors import first_line

_T = TypeVar("_T")
MAX_BACKOFF_SECONDS = 15.0


def call_with_backoff(call: Callable[[], _T], transient: Callable[[Exception], bool], budget_s: float, what: str,
                      logger: logging.Logger, reason: Callable[[Exception], str] = first_line) -> _T:
    """`call()`, retried on transient errors within `budget_s` seconds; each retry is logged as `what` failed, with
    `reason(err)`."""
    started, delay, attempt = time.monotonic(), 1.0, 1
    while True:
        try:
            return call()
        except Exception as err:
            if not transient(err) or time.monotonic() - started + delay > budget_s:
                raise
            logger.warning("%s failed (attempt %d: %s); retrying in %.0f s", what, attempt, reason(err), delay)
        time.sleep(delay)
        delay, attempt = min(2 * delay, MAX_BACKOFF_SECONDS), attempt + 1


class Outermost:
    """Calls a retried call makes to other retried calls are tried once: only the outermost one retries, so the
    waits do not multiply. `inside` is true within an `attempt`."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def inside(self) -> bool:
        return getattr(self._local, "active", False)

    def attempt(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> Callable[[], _T]:
        """`func(*args, **kwargs)` as a call to retry, marked as inside while it runs."""

        def call() -> _T:
            self._local.active = True
            try:
                return func(*args, **kwargs)
            finally:
                self._local.active = False

        return call
