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
import sys
import time
from tfmamba.progress_bar import progress_bar
bar = progress_bar(range(40), desc="work")
for step in bar:
    bar.set_postfix(step=step)  # a redraw every step, as the fold trainer's loss does
    time.sleep(0.03)
"""


def _updates(stderr: str) -> list[str]:
    return [part for part in stderr.replace("\n", "\r").split("\r") if part.startswith("work:")]


def test_a_log_file_gets_whole_lines_the_start_and_the_end_only():
    done = subprocess.run([sys.executable, "-c", WORK + "print('after', file=sys.stderr)"], capture_output=True,
                          check=True)
    lines = done.stderr.decode().split("\n")
    assert len(lines) == 4 and "\r" not in done.stderr.decode(), done.stderr
    assert lines[0].startswith("work:   0%") and "0/40" in lines[0] and lines[1].startswith("work: 100%"), lines
    assert "40/40" in lines[1] and lines[2:] == ["after", ""], lines


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


def test_long_work_in_a_log_file_gets_a_line_per_interval():
    shorter = "import tfmamba.progress_bar; tfmamba.progress_bar.LOG_INTERVAL_SECONDS = 0.3\n"
    done = subprocess.run([sys.executable, "-c", shorter + WORK], capture_output=True, text=True, check=True)
    lines = done.stderr.splitlines()
    assert 3 <= len(lines) <= 7 and all(line.startswith("work:") for line in lines), lines
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%"), lines
