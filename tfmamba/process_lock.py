"""An exclusive lock a process holds on a location it writes (a feature cache, a sweep), so that a second
process started on it by mistake (a rerun after a dropped SSH session, a second terminal) stops at once,
naming the first, instead of both writing the same files: a second cache build deleted the first's
temporary shards and reused its shard names; a second sweep driver ran the first's trials again.

`flock(2)` on a lock file: the lock goes with the process, so a killed one leaves nothing to clear. A local
folder (or file:// URI) holds its own lock file; a remote location's lives under
`~/.cache/tfmamba/locks/` of this machine, which guards the processes of one machine (a cluster's
head, where its drivers and cache builds run), not of two.
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

from tfmamba.locations import local_path

logger = logging.getLogger(__name__)

REMOTE_LOCKS = Path.home() / ".cache" / "tfmamba" / "locks"


class LocationBusy(RuntimeError):
    """Another live process holds the lock; the message names it (pid, host, since when)."""


class ProcessLock:
    """A held lock (`handle` None: none could be made); `release()`, the end of a `with` or the process's end
    frees it."""

    def __init__(self, path: Path, handle: IO[str] | None) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ProcessLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(location: str, name: str) -> Path:
    """The lock file of `name` at `location`: `.NAME.lock` in a local folder, else one per location and name
    under `REMOTE_LOCKS`."""
    folder = local_path(location)
    if folder is not None:
        return folder / f".{name}.lock"
    key = f"{location.rstrip('/')}#{name}"
    return REMOTE_LOCKS / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.lock"


def acquire(location: str, name: str, wait: str | None = None) -> ProcessLock:
    """Take the lock `name` at `location` for this process, or raise LocationBusy naming its holder; with `wait`
    (what the holder does, for the log) wait for it instead. A lock file that cannot be created (a read-only
    folder) is logged and an empty lock returned: it guards, it must not block."""
    path = lock_path(location, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
    except OSError as err:
        logger.warning("no lock at %s (%s): nothing stops a second process writing %s", path, err, location)
        return ProcessLock(path, None)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(handle)
        if wait is None:
            handle.close()
            raise LocationBusy(holder) from None
        logger.warning("waiting for %s, %s", holder, wait)
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return ProcessLock(path, handle)


def held_by(location: str, name: str) -> str | None:
    """Who holds the lock `name` at `location` now (None: nobody), found without taking it or creating a file, so a
    reader may ask where it cannot write."""
    path = lock_path(location, name)
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError:  # no lock file: never locked here (or out of reach, where nothing can be said)
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(handle)
        return None


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "a process that has not written its name yet"
