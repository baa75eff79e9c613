"""SIGTERM stops a sweep or grid the way Ctrl-C does, and ends its driver in seconds when the same signal ended Ray.

A batch job's time limit, `docker stop` or an evicted pod sends SIGTERM, then SIGKILL ~10-30 s later. Sent to the
driver alone, the driver stops as on Ctrl-C: Tune saves the running trials as unfinished, the summary and MLflow
say so, and `--resume` continues them. A job scheduler (Slurm's time limit, `scancel`), systemd's stop or `timeout`
sends it to every process of the job, Ray's own with the driver's: the GCS is gone before Tune has stopped its
trials, and Tune's clean-up then waits a minute on it before Ray's core ends the driver with status 1, printing
nothing of the sweep. Here a watcher sees the GCS gone, lets Tune finish saving its state, closes the sweep's
MLflow runs as interrupted, ends what is left of a private Ray, and ends the driver with status 130 and one line
saying how to go on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from orchestration import ray_cluster

logger = logging.getLogger(__name__)

RAY_WATCH_SECONDS = 6.0  # how long after a SIGTERM the GCS is watched for going with it (a busy one takes a while)
RAY_GONE_PROBES = 2  # connection attempts to the GCS in a row, half a second apart, that mean it is gone
SAVE_WAIT_SECONDS = 10.0  # the longest wait for Tune's last save of its state once Ray is gone
MLFLOW_WAIT_SECONDS = 8.0  # the longest wait for closing the MLflow runs (a tracking server may be stopping too)
LEFTOVER_GRACE_SECONDS = 3.0  # then what is left of a private Ray (its workers end soon after their raylet) is killed


@dataclass(frozen=True)
class OpenRuns:
    """The sweep's (or grid's) MLflow runs, closed as interrupted if the driver has to end without Tune."""

    tracking_uri: str
    experiment_id: str
    name: str
    parent_run_id: str


_state: dict[str, Any] = {"handle": False, "gcs_address": None, "runs": None, "watching": False}


def handle_sigterm_as_ctrl_c() -> None:
    """Install the handler (entry scripts' `__main__` only, not for a caller of their `main()`); `watch_ray` installs
    it again over the handler of Ray's core, which ends the driver at once with a stack dump."""
    _state["handle"] = True
    signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)


def watch_ray(gcs_address: str | None) -> None:
    """After `ray.init`: the handler again, and the GCS it checks when a SIGTERM comes (None: none checked)."""
    _state["gcs_address"] = gcs_address
    if _state["handle"]:
        signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)


def remember_runs(runs: OpenRuns) -> None:
    _state["runs"] = runs


def _stop_as_on_ctrl_c(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the driver at once
    logger.warning("SIGTERM: stopping as on Ctrl-C; the running trials are saved to continue with --resume")
    if _state["gcs_address"] and not _state["watching"]:
        _state["watching"] = True
        main = threading.main_thread().ident
        threading.Thread(target=_end_if_ray_went_too, args=(_state["gcs_address"], main), name="sigterm-watch",
                         daemon=True).start()
    signal.raise_signal(signal.SIGINT)  # Tune's handler while it runs; KeyboardInterrupt before and after


def _end_if_ray_went_too(gcs_address: str, main_thread: int | None) -> None:
    watch_until, refused = time.monotonic() + RAY_WATCH_SECONDS, 0
    while refused < RAY_GONE_PROBES:
        if time.monotonic() > watch_until or not _in_tune(main_thread):
            return  # Ray is up (Tune stops the trials, the run ends as on Ctrl-C), or Tune is done with it
        time.sleep(0.5)
        refused = 0 if _reachable(gcs_address) else refused + 1
    logger.warning("SIGTERM reached Ray's own processes too (a job scheduler, systemd or `timeout` stops every "
                   "process of the job): Ray cannot stop the trials in order, so this run ends once Tune has "
                   "saved its state")
    deadline = time.monotonic() + SAVE_WAIT_SECONDS
    while not _tune_is_cleaning_up(main_thread):
        if time.monotonic() > deadline:
            logger.warning("Tune has not saved its state in %.0f s; --resume goes on from its last save",
                           SAVE_WAIT_SECONDS)
            break
        time.sleep(0.2)
    runs = _state["runs"]
    if runs is not None:
        closing = threading.Thread(target=_close_runs, args=(runs,), name="sigterm-mlflow", daemon=True)
        closing.start()
        closing.join(MLFLOW_WAIT_SECONDS)
    ended = ray_cluster.end_private_ray_processes(LEFTOVER_GRACE_SECONDS)
    if ended:
        logger.info("ended the %d process(es) left of this run's private Ray", len(ended))
        logger.debug("those processes: %s", ", ".join(ended))
    name = f" {runs.name}" if runs is not None else ""
    print(f"\n==={name} interrupted by SIGTERM, Ray's processes stopped with it. Continue it with the same command "
          f"plus: --resume" + (f" --name {runs.name}" if runs is not None else ""), flush=True)
    sys.stderr.flush()
    os._exit(130)


def _reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether something listens at `host:port` (a GCS that is gone refuses the connection at once)."""
    try:
        with socket.create_connection(ray_cluster.host_port(address), timeout=timeout):
            return True
    except (OSError, ray_cluster.RayJoinError):
        return False


def _tune_is_cleaning_up(main_thread: int | None) -> bool:
    """Whether the driver's main thread is in Tune's clean-up, which comes after its last save of the state."""
    return any(code.co_name == "cleanup" and code.co_filename.endswith("tune_controller.py")
               for code in _main_stack(main_thread))


def _in_tune(main_thread: int | None) -> bool:
    """Whether the driver's main thread is still in Tune's run (not in the summary after it, nor in Ray's own
    shutdown at exit, which ends the GCS too)."""
    return any(f"{os.sep}ray{os.sep}tune{os.sep}" in code.co_filename for code in _main_stack(main_thread))


def _main_stack(main_thread: int | None) -> list[Any]:
    """The code objects of the main thread's frames, innermost first."""
    frame = sys._current_frames().get(main_thread) if main_thread is not None else None
    codes = []
    while frame is not None:
        codes.append(frame.f_code)
        frame = frame.f_back
    return codes


def _close_runs(runs: OpenRuns) -> None:
    """The trial and fold runs left RUNNING become KILLED, as on Ctrl-C, and so does the sweep's run."""
    from orchestration import mlflow_runs

    try:
        mlflow_runs.mark_stale_runs(runs.tracking_uri, runs.experiment_id, runs.name)
        mlflow_runs.end_run(runs.tracking_uri, runs.parent_run_id, "KILLED")
    except Exception as err:  # the runs are closed by --resume too; the driver still has to end
        logger.warning("MLflow runs not closed (--resume closes them): %s", err)
