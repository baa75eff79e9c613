"""The free-space guard of a running sweep (real folders, real signals) and the check of Tune's saved state
that `--resume` reads. The sweep stopped by a disk that fills up is `test_faults.py`'s end-to-end test."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestration.disk_guard import FreeSpaceGuard
from orchestration.launch import unreadable_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def caught_signals():
    """SIGUSR1 handled (as Tune handles it while its loop runs), each delivery recorded."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    yield caught
    signal.signal(signal.SIGUSR1, previous)


def test_the_guard_stops_the_run_once_when_a_folder_runs_low(tmp_path: Path, caught_signals: list[int]) -> None:
    watched = {"remote storage": "s3://bucket/ray", "MLflow store": str(tmp_path / "not-yet" / "made")}
    with FreeSpaceGuard(watched, min_free_gb=1e9, check_seconds=0.05) as guard:  # no disk has half of 1e9 GiB
        deadline = time.monotonic() + 10
        while not caught_signals and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # it would signal again by now
    assert caught_signals == [signal.SIGUSR1]
    assert guard.reason.startswith(f"the MLflow store {tmp_path / 'not-yet' / 'made'} had only ")
    assert guard.reason.endswith("GiB left on its disk, under 500000000.00 GiB (half of --min-free-gb 1e+09)")
    assert guard.advice().startswith("Stopped to keep it resumable: the MLflow store ")


def test_the_guard_stays_quiet_while_there_is_room(tmp_path: Path, caught_signals: list[int]) -> None:
    with FreeSpaceGuard({"Tune/Train storage": str(tmp_path)}, min_free_gb=1e-6, check_seconds=0.05) as guard:
        time.sleep(0.5)
    assert caught_signals == [] and guard.reason is None


def test_the_guard_waits_for_tunes_handler_before_it_signals(tmp_path: Path) -> None:
    """SIGUSR1's default action ends the process: before Tune's loop installs its handler the guard only waits."""
    script = textwrap.dedent(f"""
        import signal, time
        from orchestration.disk_guard import FreeSpaceGuard
        caught = []
        with FreeSpaceGuard({{"storage": {str(tmp_path)!r}}}, min_free_gb=1e9, check_seconds=0.05) as guard:
            time.sleep(0.5)  # low all along, no handler yet
            signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
            deadline = time.monotonic() + 10
            while not caught and time.monotonic() < deadline:
                time.sleep(0.05)
        print("caught", len(caught))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "caught 1"


def write_state(folder: Path, stamp: str, experiment: bytes, searcher: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{stamp}.json").write_bytes(experiment)
    (folder / f"search_gen_state-{stamp}.json").write_bytes(searcher)  # a cloudpickle, whatever the name says
    (folder / f"searcher-state-{stamp}.pkl").write_bytes(searcher)


def test_a_saved_state_cut_short_is_named(tmp_path: Path) -> None:
    state = json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}}).encode()
    searcher = pickle.dumps({"name:ConcurrencyLimiter": {"live_trials": {"a", "b"}}, "counter": 3})
    sweep = tmp_path / "sweep"
    write_state(sweep, "2026-11-29_00-00-00", state, searcher)
    assert unreadable_state(str(sweep)) is None
    assert unreadable_state(str(tmp_path / "nothing-here")) is None  # nothing to restore: restore_tuner says so

    write_state(sweep, "2026-11-29_01-00-00", state[:-7], searcher)  # the newest one is what Tune restores
    problem = unreadable_state(str(sweep))
    assert problem.startswith(f"{sweep}/experiment_state-2026-11-29_01-00-00.json: JSONDecodeError")

    write_state(sweep, "2026-11-29_02-00-00", state, searcher[:-5])
    assert unreadable_state(str(sweep)).startswith(f"{sweep}/search_gen_state-2026-11-29_02-00-00.json: ValueError")

    write_state(sweep, "2026-11-29_03-00-00", state, searcher)
    assert unreadable_state(str(sweep)) is None
    assert unreadable_state(f"file://{sweep}") is None
