"""Where things are: local paths vs URIs (s3://, gs://, file://), and files replaced in one step.

One place for the two questions every reader and writer of the pipeline asks: is this location a
URI for `pyarrow.fs` (or a plain path), and how to write a file so that a reader never sees half of
it (write beside it under a temporary name, then `os.replace`, which is atomic on one filesystem).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

SQLITE_PREFIX = "sqlite:///"


def is_uri(location: str) -> bool:
    """True for `scheme://...` (s3://, gs://, file://, ...), False for a plain path."""
    return "://" in location


def local_path(location: str) -> Path | None:
    """The local path of a plain path or a file:// URI; None for a remote URI."""
    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    if is_uri(location):
        return None
    return Path(location)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (MLflow's and Optuna's local stores); None for any other URI."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None


def absolute(location: str) -> str:
    """A plain path made absolute (workers run in other folders and on other nodes); a URI unchanged."""
    return location if is_uri(location) else str(Path(location).resolve())


@contextmanager
def replaced_atomically(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success it replaces `target` in one step, on
    an error it is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(target: str | Path) -> None:
    """Raise OSError unless a file can be made where `target` goes (its folder is made if missing): checked
    before long work whose result is written there at the end."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    probe = target.with_name(f".{target.name}.probe-{os.getpid()}")
    probe.touch()
    probe.unlink()


def write_text_atomically(target: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` so that readers see the old or the new file, never a part."""
    with replaced_atomically(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
