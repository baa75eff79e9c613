"""While a sweep or grid runs: stop it the way Ctrl-C does, before a results disk fills up.

A disk that fills mid-sweep fails every fold still training. Worse, Tune rewrites its saved state in
place on that disk, so the state comes out truncated and `--resume` cannot read it; the Tune
checkpoints of the finished folds are then lost with it. `FreeSpaceGuard` checks the driver's local
results folders every few seconds. When one of them falls under its floor, it sends the driver
SIGUSR1, which Tune handles like a Ctrl-C: the running trials stop and are saved as unfinished, and
the state is written while there is still room. `--resume`, after some space is freed, continues them.
The floor is half of `--min-free-gb` (the room a sweep needs to start), so a sweep that started may
use the other half before it is stopped. Worker nodes' own disks are not watched; a fold that fails
to write there is retried and then fails like any other error.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path

from orchestration.preflight import GIB, existing_ancestor
from tfmamba.locations import local_path

logger = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
STOP_SIGNAL = signal.SIGUSR1  # Tune's handler for it is the Ctrl-C one (tune.run's signal catching)


class FreeSpaceGuard:
    """Watches `{what: location}` (remote locations are skipped) from a thread while it is entered, against half
    of `min_free_gb`; `reason` says why it stopped the run, None if it did not."""

    def __init__(self, locations: dict[str, str], min_free_gb: float, check_seconds: float = CHECK_SECONDS) -> None:
        self.min_free_gb = min_free_gb
        self.floor_gb = min_free_gb / 2
        self.check_seconds = check_seconds
        self.reason: str | None = None
        self._folders = {what: (location, path) for what, location in locations.items()
                         if (path := local_path(location)) is not None}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="free-space-guard", daemon=True)

    def __enter__(self) -> FreeSpaceGuard:
        if self.floor_gb > 0 and self._folders:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def low_folder(self) -> str | None:
        """The first watched folder under the floor, said with its free space, or None."""
        for what, (location, path) in self._folders.items():
            base = existing_ancestor(Path(path))
            try:
                free = shutil.disk_usage(base).free
            except OSError:  # gone or unreadable for a moment: the sweep's own writes will say so
                continue
            if free < self.floor_gb * GIB:
                return (f"the {what} {location} had only {free / GIB:.2f} GiB left on its disk, under "
                        f"{self.floor_gb:.2f} GiB (half of --min-free-gb {self.min_free_gb:g})")
        return None

    def _watch(self) -> None:
        while not self._done.wait(self.check_seconds):
            low = self.low_folder()
            # Tune installs its handler when its loop starts; the default action of SIGUSR1 would kill the driver
            if low is None or signal.getsignal(STOP_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue
            self.reason = low
            logger.warning("stopping: %s; the running trials are saved to continue with --resume", low)
            os.kill(os.getpid(), STOP_SIGNAL)
            return

    def advice(self) -> str:
        """Why it stopped the run, for the user, who will resume it."""
        return f"Stopped to keep it resumable: {self.reason}. Free some space there before you resume it."
