"""Exceptions the library raises for bad input or results it cannot write, so callers (the CLI, the sweep) can
report them cleanly."""

from __future__ import annotations

import os
import re


class TFMambaError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""


class ConfigError(TFMambaError, ValueError):
    """A configuration file or value is wrong (unknown key, value out of range)."""


class DataError(TFMambaError, ValueError):
    """A corpus, manifest, audio file or feature cache is missing, corrupt or inconsistent."""


class TrainingError(TFMambaError, RuntimeError):
    """Training could not go on (a NaN or Inf loss, for instance); carries where it stopped."""


class DeviceMemoryError(TrainingError):
    """A batch did not fit in the device's memory (in training, or a clip's windows in prediction). In a
    distributed fold it is raised on that rank alone: the other ranks may be waiting for it inside a collective, so
    nothing that needs every rank (a report, a barrier) may follow it."""


class StorageError(TFMambaError, OSError):
    """A result could not be written where it goes (no space left, no permission); says where, and what is kept."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """An error in one line for a message: the first line of its text (at most `limit` characters), else its type."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def write_failure(err: BaseException) -> str:
    """The reason of a failed write in a few words: `No space left on device`, not pyarrow's or safetensors' wrapping."""
    number = getattr(err, "errno", None)
    if not number:  # safetensors and torch name it inside their message: "I/O error: ... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        number = int(found.group(1)) if found else None
    if number:
        return os.strerror(number)
    return first_line(err)
