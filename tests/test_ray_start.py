"""The entry scripts and another Ray on the same machine (issue: the embedded default must not trip over it).

Every test runs with its own $RAY_TMPDIR (where `ray start --head` records its address for
`address="auto"`) and its own $HOME (where Ray keeps `~/.ray/auth_token`), so the clusters it starts
and the address files it writes stay invisible to any other Ray on this machine.

- Without --address a script starts its own private local Ray, beside a running `ray start --head`
  whose address file and token it would otherwise pick up, and leaves that cluster as it was.
- A stale address file (a head killed without `ray stop`) is ignored without --address, and named
  in one line with --address auto.
- Joining a dead address or a head with another token fails in one line, in seconds, with nothing
  written to MLflow.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from test_sweep import run_sweep, sweep_command

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "orchestration" / "sweep.py"
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def machine(tmp_path: Path):
    """Environment of a machine of our own: a short Ray temp folder (socket paths stay under 108 bytes) and a
    home folder, with nothing of the caller's Ray address or auth settings."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-own-"))
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env |= {"RAY_TMPDIR": str(ray_tmp), "HOME": str(home)}
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def address_file(env: dict[str, str]) -> Path:
    return Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"


@pytest.fixture
def other_head(machine: dict[str, str]):
    """A `ray start --head` of another user of this machine with token authentication, its token in
    $HOME/.ray/auth_token (what `ray get-auth-token --generate` writes); stopped by its process group, never by
    a broad `ray stop`."""
    port = free_port()
    token = Path(machine["HOME"]) / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text(secrets.token_hex(32))
    head = subprocess.Popen([str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard=false", "--block"],
                            # SIGTERM: no 30 s wait for a drain answer from the GCS, which the same signal stops
                            env={**machine, "RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not address_file(machine).exists():
        assert head.poll() is None, "ray start --head exited"
        assert time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(0.5)
    yield {"env": machine, "pid": head.pid, "port": port, "token": token.read_text()}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


def join_fails(demo, tmp_path: Path, env: dict[str, str], address: str) -> tuple[str, float]:
    """Run the sweep with --address and return its one-line error and how long it took to give up."""
    tmp_path.mkdir(exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    done = subprocess.run(sweep_command(demo, tmp_path / "ray", "joined", "--address", address, "--mlflow-uri", uri),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - started
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists(), "a failed join must leave no MLflow run behind"
    return last_line(done), seconds


def test_join_a_dead_address_fails_in_one_line(demo, tmp_path: Path, machine: dict[str, str]) -> None:
    port = free_port()
    line, seconds = join_fails(demo, tmp_path, machine, f"127.0.0.1:{port}")
    print(line, f"({seconds:.1f} s)")
    assert line.startswith(f"sweep: cannot join Ray at 127.0.0.1:{port} from --address: nothing listening there")
    assert "leave out --address" in line
    assert seconds < 60  # ray.init alone retries a dead address for minutes


def test_stale_address_file(demo, tmp_path: Path, machine: dict[str, str]) -> None:
    """A head killed without `ray stop` leaves its address file: --address auto names it, no --address ignores it."""
    stale = address_file(machine)
    stale.parent.mkdir(parents=True)
    stale.write_text(f"127.0.0.1:{free_port()}")
    line, _ = join_fails(demo, tmp_path, machine, "auto")
    print(line)
    assert f"from the address file {stale}: nothing listening there" in line and f"remove {stale}" in line

    script = ("from orchestration.launch import start_ray\nimport ray\n"
              "start_ray(None, 'sqlite:////nonexistent/mlflow.db')\n"
              "print('CPUS', ray.cluster_resources().get('CPU'))\nray.shutdown()")
    done = subprocess.run([sys.executable, "-c", script], env=machine, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Started a private local Ray" in done.stdout and f"CPUS {float(os.cpu_count())}" in done.stdout
    assert not (Path(machine["HOME"]) / ".ray").exists(), "the private Ray must not write ~/.ray/auth_token"


@pytest.mark.slow
def test_sweep_beside_a_running_head(demo, tmp_path: Path, other_head: dict) -> None:
    """Before: `ValueError: When connecting to an existing cluster, num_cpus and num_gpus must not be provided`."""
    env = other_head["env"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "beside", "--mlflow-uri", uri, "--num-samples", "1",
                                     "--folds", "1"), tmp_path, env=env)
    assert "Started a private local Ray" in output
    assert "=== Sweep beside finished" in output

    token = Path(env["HOME"]) / ".ray" / "auth_token"
    assert token.read_text() == other_head["token"], "the other cluster's token must stay as it was"
    assert address_file(env).read_text().strip().endswith(f":{other_head['port']}")
    probe = ("import json, ray\nray.init(address='auto', logging_level='ERROR')\n"
             "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    joined = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stderr[-3000:]
    head_nodes = json.loads(joined.stdout.strip().splitlines()[-1])
    assert len(head_nodes) == 1, "the other cluster still has its one node, alive"
    summary = json.loads((tmp_path / "ray" / "beside-outputs" / "summary.json").read_text())
    assert set(summary["nodes"]).isdisjoint(head_nodes), "the folds ran on the private Ray, not the other cluster"

    env_wrong = {**env, "RAY_AUTH_TOKEN": "0" * 64}
    line, seconds = join_fails(demo, tmp_path / "wrong", env_wrong, "auto")
    print(line, f"({seconds:.1f} s)")
    assert "its authentication token is not this process's" in line and "ray get-auth-token" in line


STUCK_ACTOR = """
import os, sys, threading
import ray
from orchestration import ray_cluster
ray_cluster.LEFTOVER_GRACE_SECONDS = 3.0
ray_cluster.start_private_ray(1, {}, {})

@ray.remote
class Stuck:
    def arm(self):
        import atexit
        atexit.register(threading.Event().wait)  # a finaliser that never returns, as a hung teardown
        return os.getpid()

stuck = Stuck.remote()
print("STUCK", ray.get(stuck.arm.remote()), flush=True)
stuck.__ray_terminate__.remote()  # ends it gracefully: it now hangs in its teardown
"""


def test_a_private_ray_leaves_no_process_behind(machine: dict[str, str]) -> None:
    """An actor stuck in its Python teardown outlived Ray's shutdown under PID 1 (seen as an orphaned
    `ray::TrainController` after a sweep): the script's exit now ends it and names it."""
    done = subprocess.run([sys.executable, "-c", STUCK_ACTOR], env=machine, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(done.stdout.split("STUCK")[1].split()[0])
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        alive = False
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"the stuck actor (pid {pid}) outlived its private Ray"
    assert "process(es) of this run's private Ray outlived its shutdown by 3 s and were ended" in done.stderr
    assert f"ray::Stuck (pid {pid})" in done.stderr, done.stderr[-3000:]
