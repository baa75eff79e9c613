"""Progress bars: redrawn often in a terminal, a line every 30 s in a log file."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

WORK = """
import time
from tfmamba.progress import progress_bar
for _ in progress_bar(range(40), desc="work"):
    time.sleep(0.03)
"""


def _updates(stderr: str) -> list[str]:
    return [part for part in stderr.replace("\n", "\r").split("\r") if part.startswith("work:")]


def test_a_log_file_gets_the_start_and_the_end_only():
    done = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, check=True)
    updates = _updates(done.stderr)
    assert len(updates) == 2 and "0/40" in updates[0] and "40/40" in updates[-1], done.stderr


def test_a_terminal_gets_a_redrawn_bar():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, as a terminal has
    child = subprocess.Popen([sys.executable, "-c", WORK], stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child has exited and closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert child.wait() == 0
    updates = _updates(b"".join(chunks).decode())
    assert len(updates) > 5 and "40/40" in updates[-1], updates
