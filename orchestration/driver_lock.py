"""One driver per sweep or grid. A second process resuming a sweep that is still running restores the same
Tune state on its own private Ray and runs the unfinished trials again beside the first driver's: both
fail (a demo sweep ended with 3 of 4 trials failed in one and exit 130 in the other). So each driver
holds an exclusive lock on its sweep from the preflight until it exits; the lock goes with the process,
so a killed driver leaves nothing to clean up before `--resume`.

The lock file sits beside the Tune state for a local `--storage-path` (`.NAME.driver.lock`), else
under `~/.cache/tfmamba-sweeps/locks/` of the machine the drivers run on (the cluster's head).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

from tfmamba.locations import is_uri

logger = logging.getLogger(__name__)

REMOTE_LOCKS = Path.home() / ".cache" / "tfmamba-sweeps" / "locks"
_held: list[IO[str]] = []  # open for the life of the process: closing the file would release the lock


class SweepRunningError(RuntimeError):
    """Another live process drives this sweep or grid."""


def lock_path(storage: str, name: str) -> Path:
    """Where the lock of sweep `name` under `storage` lives."""
    if not is_uri(storage):
        return Path(storage) / f".{name}.driver.lock"
    return REMOTE_LOCKS / f"{hashlib.sha256(f'{storage}/{name}'.encode()).hexdigest()[:16]}.lock"


def hold(storage: str, name: str) -> Path | None:
    """Take the sweep's lock for this process, or raise SweepRunningError naming the process that has it. A
    lock that cannot be created (a read-only folder) is logged and skipped: it guards, it must not block."""
    path = lock_path(storage, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
    except OSError as err:
        logger.warning("no driver lock for %s (%s): nothing stops a second driver of it", name, err)
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise SweepRunningError(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held.append(handle)
    return path
