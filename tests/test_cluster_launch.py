"""The real `ray up` / `ray submit` / `ray down` path on this machine, typed as a user types it:

    ray up -y cluster/local-test.yaml
    ray submit cluster/local-test.yaml orchestration/sweep.py -- --address auto <tiny demo args>
    ray down -y cluster/local-test.yaml

Ray's `local` provider drives the head (this machine, as user raylocal) over the sshd that
cluster/local-sshd.sh starts on 127.0.0.1:2222 (CI's .ci/run does; without it this test is skipped).
`ray submit` copies only sweep.py to the head's home, so the sweep must import the installed packages,
join the head's Ray with `address="auto"` and log to MLflow (a SQLite file in a temp folder here).
The head's Ray runs as raylocal in its own temp folder on port 6379, so it neither joins nor stops
the local Rays other tests start; the test waits until every Ray process of raylocal is gone.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_sweep import TINY, run_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "cluster/local-test.yaml"
HEAD_USER = "raylocal"
KEY = Path.home() / ".ssh" / "ray_local"
SSH = ["ssh", "-i", str(KEY), "-p", "2222", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
       "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"{HEAD_USER}@127.0.0.1"]
SETUP_HINT = "set it up with `sudo cluster/local-sshd.sh` from this checkout (CI's .ci/run does)"


def head_problem() -> str | None:
    """Why the local cluster's head cannot be used here, or None when it can."""
    if shutil.which("ssh") is None or shutil.which("rsync") is None:
        return f"ssh or rsync is not installed; {SETUP_HINT}"
    if not KEY.is_file():
        return f"no key {KEY} for the local Ray cluster; {SETUP_HINT}"
    try:
        probe = subprocess.run(SSH + ["readlink -f ~/tfmamba-venv"], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        probe = None
    if probe is None or probe.returncode != 0:
        return f"sshd for the local Ray cluster is not reachable on 127.0.0.1:2222 as {HEAD_USER}; {SETUP_HINT}"
    if Path(probe.stdout.strip()) != Path(sys.prefix).resolve():
        return (f"the head uses the venv {probe.stdout.strip()}, not this test's {sys.prefix}; rerun "
                "cluster/local-sshd.sh from this checkout")
    return None


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run `ray ARGS` from the repository root with this venv first on PATH, as a user does."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(bin_dir / "ray"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ray_ok(*args: str, timeout: float) -> str:
    """`ray_cli` that must succeed; returns stdout + stderr."""
    done = ray_cli(*args, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def head_ray_processes() -> dict[int, str]:
    """Processes of the head's account other than its SSH sessions (Ray's, after `ray up`): pid -> command."""
    listing = subprocess.run(["ps", "-u", HEAD_USER, "-o", "pid=,comm=,args="], capture_output=True, text=True).stdout
    rows = (line.split(None, 2) for line in listing.splitlines() if line.strip())
    return {int(row[0]): row[-1][:200] for row in rows if row[1] != "sshd"}


def wait_for_no_head_processes(timeout: float = 60) -> list[str]:
    """Wait for the head's processes to end; kill (by pid) and name any still there at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := head_ray_processes()) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return list(left.values())


@pytest.fixture
def work():
    """A temp folder the head's account can write to (the sweep runs as raylocal); with the demo data and an
    MLflow database whose experiment keeps its artifacts here, not in the head's home."""
    from mlflow.tracking import MlflowClient

    from tfmamba.demo import ensure_demo_data

    if reason := head_problem():
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="tfm-launch-"))
    folder.chmod(0o777)
    demo = ensure_demo_data(folder / "demo", clips_per_speaker=12, progress=False)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("tfmamba-sweeps", artifact_location=(folder / "mlartifacts").as_uri())
    (folder / "mlflow.db").chmod(0o666)
    yield folder, demo, uri
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_up_submit_down(work) -> None:
    folder, demo, uri = work
    head_home = Path(pwd.getpwnam(HEAD_USER).pw_dir)
    (head_home / "sweep.py").unlink(missing_ok=True)
    sets = [arg for item in TINY for arg in ("--set", item)]
    timings = {}
    try:
        started = time.monotonic()
        up = ray_ok("up", "-y", CONFIG, timeout=300)
        timings["ray up"] = time.monotonic() - started
        assert f"head python: {head_home}/tfmamba-venv/" in up, up[-3000:]
        started = time.monotonic()
        submitted = ray_ok("submit", CONFIG, "orchestration/sweep.py", "--", "--address", "auto",
                            "--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--folds", "1",
                            "--num-samples", "1", "--storage-path", str(folder / "ray"), "--name", "launch",
                            "--mlflow-uri", uri, *sets, timeout=480)
        timings["ray submit"] = time.monotonic() - started
    finally:
        started = time.monotonic()
        down = ray_cli("down", "-y", CONFIG, timeout=180)
        timings["ray down"] = time.monotonic() - started
        leftovers = wait_for_no_head_processes()
    print("  ".join(f"{step}: {seconds:.0f} s" for step, seconds in timings.items()))
    assert down.returncode == 0, (down.stdout + down.stderr)[-3000:]
    assert not leftovers, f"ray down left these running (now killed): {leftovers}"

    print(submitted[submitted.find("=== Sweep"):])
    assert "orchestration/sweep.py (local) to ~/sweep.py (remote)" in submitted
    assert "python ~/sweep.py --address auto" in submitted
    assert "Connecting to existing Ray cluster at address" in submitted
    assert "=== Sweep launch finished" in submitted
    assert (head_home / "sweep.py").read_bytes() == (ROOT / "orchestration" / "sweep.py").read_bytes()
    assert not (head_home / "orchestration").exists(), "only sweep.py may be copied to the head"

    tree = run_tree(uri, "launch")
    assert [len(tree[kind]) for kind in ("sweep", "trial", "fold")] == [1, 1, 1]
    assert all(run.info.status == "FINISHED" for kind in tree.values() for run in kind)
    (fold_run,) = tree["fold"]
    assert fold_run.data.tags["node_id"] and {"valid_ua_best", "test_ua"} <= set(fold_run.data.metrics)
    summary = json.loads((folder / "ray" / "launch-outputs" / "summary.json").read_text())
    assert summary["sweep_run_id"] == tree["sweep"][0].info.run_id
    assert summary["trials"][0]["folds"][0]["node_id"] == fold_run.data.tags["node_id"]
    print(f"MLflow runs: sweep {tree['sweep'][0].info.run_id}, trial {tree['trial'][0].info.run_id}, "
          f"fold {fold_run.info.run_id} on node {fold_run.data.tags['node_id']}")
