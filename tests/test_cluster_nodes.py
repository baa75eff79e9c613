"""A cluster is not one machine: nodes that share no disk, a cluster that starts empty and grows, a node lost mid-fold.

All on this machine, each cluster with its own RAY_TMPDIR, RAY_AUTH_MODE=disabled, and stopped by its process
groups (never a broad `ray stop`):
- no shared disk: a head (no CPU for folds) and a worker node in its own mount namespace, where the head's
  prepared-data folder and MLflow store are hidden under a tmpfs; a "bucket" folder both see stands in for S3.
  The tiny sweep joined with --address finishes with every fold on that node; with the cache on a head-only
  path it stops before any trial, naming the path and the node.
- autoscaling from zero: Ray's fake multi-node provider (head with 0 CPU, workers min 0), a 2-trial x 2-fold
  sweep: the autoscaler launches nodes for the pending folds and at least 3 folds run at once.
- a lost node: the raylet of the node running a fold is killed mid-epoch; the fold resumes from its checkpoint
  on the other node, in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from servers import MlflowServer, free_port

from orchestration.resources import DRIVER_RESOURCE
from test_sweep import run_sweep, run_tree, sweep_command

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
# Ray's fake multi-node provider: a head with no CPU (it holds the trial drivers' resource) and up to 4 worker
# nodes of 1 CPU that the autoscaler starts for pending demand and removes after 15 idle seconds. The keys
# without content must be there (the monitor fails on a missing one).
FAKE_CLUSTER = {
    "cluster_name": "fake_multinode", "max_workers": 4, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.25,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0, DRIVER_RESOURCE: 1000}, "max_workers": 0, "node_config": {}},
        "ray.worker.cpu": {"resources": {"CPU": 1, "object_store_memory": 200_000_000}, "node_config": {},
                           "min_workers": 0, "max_workers": 4}},
    "head_node_type": "ray.head.default", "docker": {}, "auth": {"ssh_user": "ubuntu"},
    **{key: {} for key in ("file_mounts",)},
    **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                           "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
    "file_mounts_sync_continuously": False,
}


def ray_env(ray_tmp: Path) -> dict[str, str]:
    """A cluster's own temp dir, no authentication, and no drain on SIGTERM: `ray start --block` would first ask the
    GCS to drain its node and wait for that up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (30 s), and the GCS, in the
    same process group, is going away too."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    return env | {"RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


class Processes:
    """`ray start --block` processes (each in its own process group) stopped together at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM each group; once its `ray start` has stopped its own node, SIGKILL what is left in the group (the
        raylets and workers of the nodes Ray's fake provider started, which can outlive their GCS)."""
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group is empty
                pass


def alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    probe = ("import json, ray\nray.init(address=%r, logging_level='ERROR')\n"
             "print(json.dumps([{'id': n['NodeID'], 'cpu': n['Resources'].get('CPU', 0)} "
             "for n in ray.nodes() if n['Alive']]))" % address)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # the driver may also print the autoscaler's events ("(autoscaler +0s) Resized to 0 CPUs."): the list is its own line
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("[")))


def wait_for_nodes(address: str, env: dict[str, str], count: int, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(nodes := alive_nodes(address, env)) < count:
        assert time.monotonic() < deadline, f"only {len(nodes)} of {count} Ray nodes came up"
        time.sleep(2)
    return nodes


def head_command(port: int, cpus: int = 0) -> list[str]:
    return [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false",
            "--resources", json.dumps({DRIVER_RESOURCE: 1000}), "--block"]


@pytest.fixture
def ray_tmp():
    folder = Path(tempfile.mkdtemp(prefix="ray-nodes-"))  # short: Ray's socket paths must stay under 108 bytes
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def processes():
    running = Processes()
    yield running
    running.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare --mount")
def test_nodes_that_share_no_disk(demo, tmp_path: Path, ray_tmp: Path, processes: Processes) -> None:
    from mlflow.tracking import MlflowClient

    head_only, bucket = tmp_path / "head-only", tmp_path / "bucket"
    shutil.copytree(demo.manifest_dir, head_only / "manifest")
    shutil.copytree(demo.cache, bucket / "cache")
    shutil.copytree(demo.cache, head_only / "cache")
    server = MlflowServer(head_only)  # its SQLite store is under the head-only folder
    server.start()
    try:
        env, port = ray_env(ray_tmp), free_port()
        processes.start(head_command(port), env, tmp_path / "head.log")
        address = f"127.0.0.1:{port}"
        wait_for_nodes(address, env, 1)
        hidden_node = (f"mount -t tmpfs tmpfs {head_only} && exec {RAY} start --address {address} --num-cpus 2 "
                       "--block")
        processes.start(["unshare", "--mount", "--propagation", "private", "bash", "-c", hidden_node], env,
                        tmp_path / "node.log")
        worker = [n["id"] for n in wait_for_nodes(address, env, 2) if n["cpu"] > 0]

        def sweep(name: str, cache: Path) -> list[str]:
            return [*sweep_command(demo, bucket / "ray", name, "--address", address, "--mlflow-uri", server.uri,
                                   "--num-samples", "1"),
                    "--manifest", str(head_only / "manifest"), "--cache", str(cache)]

        started = time.monotonic()
        refused = subprocess.run(sweep("head-cache", head_only / "cache"), cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=300)
        print(f"head-only cache refused in {time.monotonic() - started:.0f} s:\n{refused.stderr[-1500:]}")
        assert refused.returncode != 0
        assert f"cannot use the feature cache --cache {head_only / 'cache'} (not visible on this node)" in refused.stderr
        assert worker[0][:12] in refused.stderr and "Traceback" not in refused.stderr
        assert MlflowClient(server.uri).get_experiment_by_name("tfmamba-sweeps") is None, "nothing may start"

        started = time.monotonic()
        output = run_sweep(sweep("no-shared-disk", bucket / "cache"), tmp_path, env=env)
        print(f"sweep on the hidden node: {time.monotonic() - started:.0f} s")
        assert "=== Sweep no-shared-disk finished" in output
        tree = run_tree(server.uri, "no-shared-disk")
        assert [len(tree[kind]) for kind in ("sweep", "trial", "fold")] == [1, 1, 2]
        assert all(run.info.status == "FINISHED" for kind in tree.values() for run in kind)
        assert {run.data.tags["node_id"] for run in tree["fold"]} == set(worker)
    finally:
        server.stop()


def test_autoscaling_from_zero(demo, tmp_path: Path, ray_tmp: Path, processes: Processes) -> None:
    """The fake multi-node provider needs the default GCS port 6379 (ray-on-one-machine.md)."""
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump(FAKE_CLUSTER))
    env = ray_env(ray_tmp)
    head = head_command(6379) + [f"--autoscaling-config={tmp_path / 'fake.yaml'}"]
    processes.start(head, env | {"RAY_FAKE_CLUSTER": "1"}, tmp_path / "head.log")
    address = "127.0.0.1:6379"
    assert len(wait_for_nodes(address, env, 1)) == 1, "the cluster starts with the head alone"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "grows", "--address", address, "--mlflow-uri", uri,
                                     "--max-fold-slots", "4", "--set", "epochs=2"), tmp_path, env=env, timeout=900)
    print(f"autoscaled sweep: {time.monotonic() - started:.0f} s\n{output[output.find('=== Sweep'):]}")
    assert "planning for 4 as the autoscaler adds nodes" in output
    tree = run_tree(uri, "grows")
    assert [len(tree[kind]) for kind in ("sweep", "trial", "fold")] == [1, 2, 4]
    spans = [(run.info.start_time, run.info.end_time) for run in tree["fold"]]
    peak = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    nodes = {run.data.tags["node_id"] for run in tree["fold"]}
    print(f"peak folds at once: {peak}, fold nodes: {len(nodes)}")
    assert peak >= 3 and len(nodes) >= 3
    deadline = time.monotonic() + 150
    while len(alive_nodes(address, env)) > 1:
        assert time.monotonic() < deadline, "idle worker nodes were not removed by the autoscaler's idle timeout"
        time.sleep(5)
    print(f"idle nodes gone {time.monotonic() - started:.0f} s after the sweep started")


def test_a_node_lost_mid_fold(tmp_path: Path, ray_tmp: Path, processes: Processes) -> None:
    """The raylet of the node running the fold is SIGKILLed once the Train controller registered the fold's first
    epoch checkpoint, as a spot reclaim does; the fold moves to the other node and resumes from a checkpoint."""
    from mlflow.tracking import MlflowClient

    from test_faults import EPOCHS, checkpointed_epoch, sweep_command as slow_fold_command
    from tfmamba.demo import ensure_demo_data

    demo = ensure_demo_data(tmp_path / "demo", clips_per_speaker=24, progress=False)
    env, port = ray_env(ray_tmp), free_port()
    processes.start(head_command(port), env, tmp_path / "head.log")
    address = f"127.0.0.1:{port}"
    wait_for_nodes(address, env, 1)
    for count, name in enumerate(("a", "b"), start=2):  # one at a time: two raylets starting at once may bind one port
        processes.start([str(RAY), "start", "--address", address, "--num-cpus", "1", "--block"], env,
                        tmp_path / f"node-{name}.log")
        wait_for_nodes(address, env, count)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = subprocess.Popen(slow_fold_command(demo, tmp_path / "ray", "lost", "--address", address,
                                                "--mlflow-uri", uri),
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    client, deadline, first = MlflowClient(uri), time.monotonic() + 300, None
    while first is None:
        assert driver.poll() is None, "the sweep ended before the fold's first epoch"
        assert time.monotonic() < deadline, "the fold never reached its first epoch"
        started = Path(uri[len("sqlite:///"):]).exists() and client.get_experiment_by_name("tfmamba-sweeps")
        folds = run_tree(uri, "lost")["fold"] if started else []
        if folds and folds[0].data.tags.get("node_id") and checkpointed_epoch(tmp_path / "ray", "lost") >= 1:
            first = folds[0].data.tags["node_id"]  # the Train controller has the fold's epoch-1 checkpoint
        time.sleep(0.2)
    raylets = subprocess.run(["pgrep", "-f", f"raylet.*--node_id={first}"], capture_output=True, text=True)
    pids = [int(pid) for pid in raylets.stdout.split()]
    assert len(pids) == 1, f"the raylet of node {first}: {raylets.stdout!r}"
    os.kill(pids[0], signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-5000:]
    tree = run_tree(uri, "lost")
    assert [len(tree[kind]) for kind in ("sweep", "trial", "fold")] == [1, 1, 1], "no duplicate or lost fold run"
    fold = tree["fold"][0]
    assert fold.info.status == "FINISHED"
    attempts = fold.data.tags["attempt_nodes"].split(",")
    print(f"attempts on nodes {attempts}, resumed from epoch {fold.data.tags.get('resumed_from_epoch')}")
    assert attempts[0] == first[:12] and attempts[-1] != first[:12] and fold.data.tags["node_id"] != first
    assert int(fold.data.tags["resumed_from_epoch"]) >= 1
    steps = sorted(m.step for m in client.get_metric_history(fold.info.run_id, "valid_ua"))
    assert steps == list(range(1, EPOCHS + 1)), steps
