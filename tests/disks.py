"""Small real filesystems that fill up: tmpfs mounts for the tests of a full disk (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class SmallDisks:
    """`mount(mib)` gives a fresh tmpfs folder of that size under `root`; `fill(disk, leave)` takes all of its free
    space but `leave` bytes; `unmount_all()` at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, mib: int) -> Path:
        disk = self.root / f"disk{len(self.mounted)}"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(disk)], check=True)
        self.mounted.append(disk)
        return disk

    @staticmethod
    def fill(disk: Path, leave: int) -> Path:
        filler = disk / "filler"
        with filler.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(disk).free - leave)
        return filler

    def unmount_all(self) -> None:
        for disk in self.mounted:
            subprocess.run(["umount", "--lazy", str(disk)], check=False)
