"""Several Ray nodes on one machine: `ray.cluster_utils.Cluster` starts a head with no CPU (it holds the
trial-driver resource) and two worker nodes of 1 CPU each, every one a real raylet with its own node id.
The tiny sweep (1 trial x 2 folds x 1 epoch, 2 folds at once) joins it by `--address`, so its two folds
must run on the two worker nodes: the sweep's summary.json and the fold runs' MLflow tags both say so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from test_sweep import run_sweep, run_tree, sweep_command

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    """A 3-node Ray cluster in its own temp folder (short: Ray's socket paths must stay under 108 bytes),
    so its address file never makes another process's `ray.init()` on this machine join it."""
    from ray.cluster_utils import Cluster

    from orchestration.resources import DRIVER_RESOURCE

    temp = tempfile.mkdtemp(prefix="ray-mn-")
    monkeypatch.setenv("RAY_TMPDIR", temp)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {DRIVER_RESOURCE: 1000}, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, {worker.node_id for worker in workers}
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_folds_run_on_several_nodes(demo, cluster, tmp_path: Path) -> None:
    ray_cluster, worker_ids = cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "multinode", "--address", ray_cluster.address,
                                     "--mlflow-uri", uri, "--num-samples", "1", "--parallel-folds", "2"), tmp_path)
    print(f"multi-node sweep: {time.monotonic() - started:.0f} s\n{output[output.find('=== Sweep'):]}")
    assert "Connecting to existing Ray cluster" in output
    assert "=== Sweep multinode finished" in output and "Folds ran on 2 Ray node(s)" in output

    summary = json.loads((tmp_path / "ray" / "multinode-outputs" / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["status"] == "complete" and [f["fold"] for f in trial["folds"]] == [1, 2]
    summary_nodes = {f["fold"]: f["node_id"] for f in trial["folds"]}
    assert set(summary_nodes.values()) == worker_ids, "each fold must run on its own worker node"
    assert summary["nodes"] == {node: 1 for node in worker_ids}

    tree = run_tree(uri, "multinode")
    assert [len(tree[kind]) for kind in ("sweep", "trial", "fold")] == [1, 1, 2]
    tagged = {int(run.data.tags["fold"]): run.data.tags["node_id"] for run in tree["fold"]}
    assert tagged == summary_nodes
    assert all(run.data.tags["node_ip"] and run.data.tags["hostname"] for run in tree["fold"])
    assert all(run.info.status == "FINISHED" for kind in tree.values() for run in kind)
    for run in sorted(tree["fold"], key=lambda r: r.data.tags["fold"]):
        print(f"fold {run.data.tags['fold']}: node {run.data.tags['node_id']}, MLflow run {run.info.run_id}")
