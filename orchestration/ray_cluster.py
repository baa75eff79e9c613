"""Start a private local Ray, or join a running cluster with a one-line reason when that cannot work.

Without `--address` every entry script starts its own local Ray (`address="local"`), whatever else
runs on the machine: a `ray start --head` (running, or killed without `ray stop`, which leaves its
address file behind) or `$RAY_ADDRESS` is never joined by accident. Ray 2.60's token
authentication would have a new local Ray read (or create) `~/.ray/auth_token`, which another head
on the machine may replace at any time; so the private Ray gets a token of its own through the
environment, inherited by its processes only, and `~/.ray` is neither read nor written. Its processes end with
the command: what outlives Ray's shutdown at exit (an actor hung in its teardown) is killed, and named. The driver
adopts them (a child subreaper), so a worker whose raylet has died is found too.

With `--address auto` or HOST:PORT the cluster is probed before `ray.init`: the address it resolves
to (and where that came from), a TCP connection, the cluster's token and its Ray/Python versions.
Each failure is a `RayJoinError` with one line saying why and what to do; `ray.init` on a dead
address would otherwise retry for minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import secrets
import socket
import time
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
ADDRESS_ENV = "RAY_ADDRESS"
# A sweep starts ~10 Ray worker processes at once (trial drivers, each lane's Train controller and workers); the raylet
# starts as many at a time as the node has CPUs and warns about "N PYTHON worker processes" past 4x that, which on
# a 2-core machine is every sweep. Starting up to 8 at a time changed no sweep timing measured (benchmarks/README.md).
STARTUP_CONCURRENCY_ENV = {"RAY_worker_maximum_startup_concurrency": "8"}
# The raylet starts one idle worker process per CPU for the first driver, for tasks a sweep never runs (its trial
# drivers, dispatcher and Train processes are actors, each started in a process of its own): on 2 cores two Python
# processes importing Ray while the sweep's own start. A value set wins.
NO_PRESTART_ENV = {"RAY_prestart_worker_first_driver": "0"}
PROBE_SECONDS = 5.0
# After a private Ray's shutdown its processes end within ~1.5 s on 2 cores; what still runs this much later is stuck.
LEFTOVER_GRACE_SECONDS = 10.0
PR_SET_CHILD_SUBREAPER = 36  # prctl option (linux/prctl.h)
_private_ray: dict[str, list[psutil.Process]] = {"started": []}  # what the last private Ray's `ray.init` started


class RayJoinError(RuntimeError):
    """The cluster named by --address cannot be joined; the message is one line with the reason and the fix."""


def address_file() -> Path:
    """Where `ray start --head` records its address for `address="auto"` ($RAY_TMPDIR, $TMPDIR or /tmp)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def start_private_ray(num_cpus: int | None, resources: dict[str, float], runtime_env: dict) -> str:
    """A new local Ray for this process alone, with its own auth token unless the user set one; returns its
    session folder (logs are under it)."""
    import ray

    if os.environ.get(ADDRESS_ENV):
        logger.info("$%s=%s is not joined without --address (give --address auto to join it)", ADDRESS_ENV,
                    os.environ[ADDRESS_ENV])
    if not any(os.environ.get(key) for key in AUTH_ENV):
        _use_own_token()
    for key, value in (STARTUP_CONCURRENCY_ENV | NO_PRESTART_ENV).items():  # read by the raylet this starts
        os.environ.setdefault(key, value)
    _adopt_orphans()
    before = {child.pid for child in psutil.Process().children()}
    context = ray.init(address="local", num_cpus=num_cpus, resources=resources, include_dashboard=False,
                       runtime_env=runtime_env)
    started = [child for child in psutil.Process().children() if child.pid not in before]  # raylet, GCS, ...
    _private_ray["started"] = started
    atexit.register(_shut_down_leaving_nothing, started)  # runs before Ray's own atexit shutdown (registered earlier)
    return context.address_info.get("session_dir", "")


def end_private_ray_processes(grace: float) -> list[str]:
    """Wait up to `grace` s for what the private Ray still runs to end, then kill it; the names of those killed.
    For a driver ending without Ray's shutdown (a SIGTERM that reached Ray's processes too)."""
    return _end(_private_ray_tree(_private_ray["started"]), grace)


def _shut_down_leaving_nothing(started: list[psutil.Process]) -> None:
    """Shut the private Ray down, then end what of it outlives that. An actor stuck in its Python teardown (a
    finaliser that never returns: a Train controller ending as the sweep exits was seen so) is not ended by
    Ray's shutdown: it lives on under PID 1, holding its memory, long after the command has exited."""
    import ray

    processes = _private_ray_tree(started)
    ray.shutdown()
    ended = _end(processes, LEFTOVER_GRACE_SECONDS)
    if ended:
        logger.warning("%d process(es) of this run's private Ray outlived its shutdown by %.0f s and were ended: %s",
                       len(ended), LEFTOVER_GRACE_SECONDS, ", ".join(ended))


def _private_ray_tree(started: list[psutil.Process]) -> list[psutil.Process]:
    """The private Ray's processes: those `ray.init` started (raylet, GCS, ...) with everything under them, and
    the workers of its raylet that this process adopted when the raylet ended before them."""
    tree = [process for root in started for process in [root, *_descendants(root)]]  # gone ones are skipped
    ours, known = {root.pid for root in started}, {process.pid for process in tree}
    for child in psutil.Process().children():
        if child.pid not in known and _raylet_of(child) in ours:
            tree += [child, *_descendants(child)]
    return tree


def _raylet_of(process: psutil.Process) -> int | None:
    """The pid of the raylet that started a Ray worker (its environment's RAY_RAYLET_PID), else None."""
    with contextlib.suppress(psutil.Error, ValueError):
        return int(process.environ().get("RAY_RAYLET_PID", ""))
    return None


def _end(processes: list[psutil.Process], grace: float) -> list[str]:
    """Wait up to `grace` s for `processes` to end (gone ones and zombies are skipped), kill the rest; their names."""
    deadline = time.monotonic() + grace
    alive = _living(processes)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _living(alive)
    names = sorted(f"{_name(process)} (pid {process.pid})" for process in alive)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return names


def _adopt_orphans() -> None:
    """Make this process the subreaper of what it starts: a Ray worker whose raylet has died is re-parented here,
    not to PID 1, so the clean-up at exit still finds it (Linux; elsewhere nothing changes)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _living(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running: a zombie has ended (an adopted one is reaped by PID 1 once this process exits)."""
    living = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                living.append(process)
    return living


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return process.children(recursive=True)
    return []


def _name(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return process.name()
    return "?"


def _use_own_token() -> None:
    """Token authentication with a fresh token of this process's (its Ray processes inherit the environment);
    Ray's cached settings are re-read, as `ray.init` does when it turns token mode on itself."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def resolve_address(address: str) -> tuple[str | None, str]:
    """The HOST:PORT `address` means and where that came from; None for `auto` with nothing recorded
    (Ray then looks for a running head by its processes)."""
    if address != "auto":
        return address, "--address"
    if os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV], f"${ADDRESS_ENV}"
    path = address_file()
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), f"the address file {path}"
    return None, "no address file"


def host_port(address: str) -> tuple[str, int]:
    """The host and port of `HOST:PORT` (`[::1]:6379` gives `::1`, as sockets take it)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayJoinError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    return host.strip("[]"), int(port)


def probe_cluster(address: str, source: str) -> None:
    """Raise `RayJoinError` unless a Ray head of our version listens at `address` and accepts our token."""
    host, port = host_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as err:
        stale = (f" (stale: remove {address_file()} or start the cluster with `ray start --head`)"
                 if source.startswith("the address file") else "")
        raise RayJoinError(f"cannot join Ray at {address} from {source}: nothing listening there "
                           f"({err.strerror or err}){stale}; or leave out --address to start a private local Ray"
                           ) from None
    metadata = _cluster_metadata(address)
    if metadata is None:
        return
    _check_versions(address, metadata)


def _cluster_metadata(address: str) -> dict | None:
    """The head's cluster metadata (versions), read through a GCS client; None when it cannot be read
    for another reason than authentication (ray.init then gives its own error)."""
    import json

    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as ray.init does for a found cluster
    try:
        raw = GcsClient(address=address).internal_kv_get(b"CLUSTER_METADATA", namespace=b"cluster",
                                                          timeout=PROBE_SECONDS)
    except AuthenticationError:
        raise RayJoinError(
            f"cannot join Ray at {address}: its authentication token is not this process's; run "
            "`ray get-auth-token` on the head and export it here as RAY_AUTH_TOKEN (or put it in ~/.ray/auth_token), "
            "or leave out --address to start a private local Ray") from None
    except Exception as err:  # an older head without the key, a timeout: let ray.init say what it finds
        logger.debug("could not read the cluster metadata of %s: %s", address, err)
        return None
    return json.loads(raw) if raw else None


def _check_versions(address: str, metadata: dict) -> None:
    import sys

    import ray

    theirs = (metadata.get("ray_version"), metadata.get("python_version"))
    ours = (ray.__version__, ".".join(map(str, sys.version_info[:3])))
    if None not in theirs and theirs != ours:
        raise RayJoinError(f"cannot join Ray at {address}: it runs Ray {theirs[0]} on Python {theirs[1]}, this "
                           f"process Ray {ours[0]} on Python {ours[1]}; install the cluster's versions here (or "
                           "submit the script with `ray submit` / `ray job submit` to run it on the head)")


def join_cluster(address: str, runtime_env: dict) -> None:
    """`ray.init(address)` after the probe; Ray's own connection errors are turned into one line too."""
    import ray

    resolved, source = resolve_address(address)
    if resolved is not None:
        probe_cluster(resolved, source)
    elif address == "auto":
        logger.info("--address auto: no $%s and no %s; looking for a running Ray head", ADDRESS_ENV, address_file())
    try:
        ray.init(address=resolved or address, runtime_env=runtime_env)
    except ConnectionError as err:
        where = resolved or "this machine"
        raise RayJoinError(f"cannot join Ray at {where}: {str(err).splitlines()[0]}; start a cluster with "
                           "`ray start --head`, or leave out --address to start a private local Ray") from None
    except RuntimeError as err:
        if "Version mismatch" not in str(err):
            raise
        raise RayJoinError(f"cannot join Ray at {resolved}: {' '.join(str(err).split())}") from None
