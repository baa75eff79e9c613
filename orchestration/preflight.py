"""Before a sweep starts anything: can it write where its results go, and is there room?

`check_outputs` probes every folder a sweep writes to (the Tune/Train storage path, the fold
output folder, and for a local MLflow store the SQLite file's folder and the artifact folder):
a local folder must be a folder (or creatable under one), take a small probe file, and have at
least the free-space floor left; a remote storage path (s3://, gs://, ...) must take a probe
object through `pyarrow.fs`, which is then deleted; an MLflow tracking server or database must
answer. All problems are reported at once, before Ray starts or an MLflow run is created. The
probe is a real write because permission bits say little when the sweep runs as root.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from orchestration import mlflow_runs
from tfmamba.errors import first_line
from tfmamba.locations import local_path, sqlite_path

DEFAULT_MIN_FREE_GB = 1.0
GIB = 1024**3
PROBE_PREFIX = ".tfmamba-preflight-"
TRACKING_PROBE_SECONDS = 10.0
# How MLflow's client words a server that answered with errors (urllib3's retries over 5xx statuses).
SERVER_ERRORS = re.compile(r"too many (5\d\d) error responses")


class PreflightError(RuntimeError):
    """A results location that cannot be written or has too little room; the message lists them all."""


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_local(path: Path, min_free_bytes: int) -> str | None:
    """Why `path` (a folder, existing or to be created) is unusable, or None if it is fine."""
    base = existing_ancestor(path)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=base)
        try:
            os.write(handle, b"probe")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        return f"cannot write in {base} ({err.strerror or err})"
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        return f"only {free / GIB:.2f} GiB free on {base}, below the floor of {min_free_bytes / GIB:.2f} GiB"
    return None


def check_remote(uri: str) -> str | None:
    """Why the remote folder `uri` cannot take a probe object, or None; free space is not checked there."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        probe = f"{path.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"probe")
        filesystem.delete_file(probe)
    except (OSError, ValueError) as err:
        return f"cannot write a probe object ({str(err).splitlines()[0]})"
    return None


def mlflow_locations(tracking_uri: str, experiment: str) -> dict[str, str]:
    """The local folders a `sqlite:` MLflow store writes to (the database's folder, the default artifact folder)."""
    database = sqlite_path(tracking_uri)
    if database is None:
        return {}
    where = {"MLflow store": str(database.parent)}
    artifacts = mlflow_runs.default_artifact_location(tracking_uri, experiment)
    if artifacts:
        where["MLflow artifacts"] = artifacts
    return where


def check_tracking_store(tracking_uri: str, existing: bool = False) -> str | None:
    """Why the MLflow tracking store at `tracking_uri` (a server, a database) cannot be read, or None. A down
    server gets `TRACKING_PROBE_SECONDS` to answer, not the minutes a sweep's calls wait for it once running; a
    local store is checked as folders (`mlflow_locations`), never created here: with `existing` (a reader such
    as the report) its SQLite file must be there."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        return f"no such file {database}" if existing and not database.is_file() else None
    if local_path(tracking_uri) is not None:
        return None
    try:
        probe(tracking_uri, retry_seconds=TRACKING_PROBE_SECONDS)
    except Exception as err:  # an unknown scheme, no connection, a refused login: all end the sweep here
        failing = SERVER_ERRORS.search(str(err))
        if failing:  # e.g. a server whose database is down or being failed over: 503 at once
            return (f"the server answers, but with HTTP {failing.group(1)} errors: its own store (the database of "
                    "its --backend-store-uri) may be down or out of its reach; see the server's log")
        return f"cannot reach it ({first_line(err)})"
    return None


@mlflow_runs.retried
def probe(tracking_uri: str) -> None:
    """One read of the tracking store (its first experiment)."""
    mlflow_runs.client(tracking_uri).search_experiments(max_results=1)


def check_outputs(locations: dict[str, str], min_free_gb: float = DEFAULT_MIN_FREE_GB,
                  tracking_uri: str | None = None) -> None:
    """Probe every `{what: location}` and the MLflow tracking store; raise PreflightError naming each one that
    fails."""
    floor = int(min_free_gb * GIB)
    problems = []
    for what, location in locations.items():
        path = local_path(location)
        problem = check_local(path, floor) if path is not None else check_remote(location)
        if problem:
            problems.append(f"  - {what} {location}: {problem}")
    problem = check_tracking_store(tracking_uri) if tracking_uri else None
    if problem:
        problems.append(f"  - MLflow tracking store {tracking_uri}: {problem}")
    if problems:
        raise PreflightError("cannot write the results, nothing was started:\n" + "\n".join(problems)
                             + "\nFix the paths (--storage-path, --mlflow-uri or $MLFLOW_TRACKING_URI, the working "
                               f"folder), free some space, or change the floor with --min-free-gb "
                               f"(now {min_free_gb:g} GiB).")
