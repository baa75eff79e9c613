"""Before any trial starts on a joined cluster: can the nodes where folds will run read what the folds need?

Cluster nodes share no disk unless the cluster config gives them one. A fold reads the feature cache,
writes checkpoints under the Train storage path and logs to the tracking server; the manifest and the
folds travel with its task. So a small Ray task runs on every alive node that can hold a fold worker
(or, on a cluster that has none yet, on the first one the autoscaler brings) and checks, for every
local path among those locations, that the node sees the same folder as the driver (a probe file the
driver wrote there), and that the node reaches the tracking server. Remote URIs (s3://, gs://, ...)
are the nodes' to reach: a pyarrow.fs problem there shows up in the fold itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from tfmamba.locations import local_path, sqlite_path

logger = logging.getLogger(__name__)

PROBE_PREFIX = ".tfmamba-node-check-"
WAIT_FOR_NODE_SECONDS = 600.0


class NodeCheckError(RuntimeError):
    """Nodes that cannot read what folds need; one line per node and location, with what to do."""


def _tracking_target(tracking_uri: str) -> tuple[str, str]:
    """("http", health URL) for a tracking server, ("file", folder) for a local store, ("", "") otherwise."""
    if tracking_uri.startswith(("http://", "https://")):
        return "http", tracking_uri.rstrip("/") + "/health"
    if (database := sqlite_path(tracking_uri)) is not None:
        return "file", str(database.parent)
    return "", ""


def check_on_node(probes: dict[str, str], tracking: tuple[str, str]) -> dict[str, Any]:
    """Run on a node: which probe files (what -> path) it cannot see, and whether it reaches the tracking server."""
    import socket
    import urllib.request

    import ray

    problems = [f"{what} {Path(path).parent} (not visible on this node)" for what, path in probes.items()
                if not Path(path).is_file()]
    kind, target = tracking
    if kind == "http":
        try:
            urllib.request.urlopen(target, timeout=10).close()
        except Exception as err:  # any failure to reach it is the finding
            problems.append(f"the MLflow tracking server {target.removesuffix('/health')} "
                            f"(unreachable: {str(err).splitlines()[0][:200]})")
    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "problems": problems}


def fold_nodes(cpus: float, gpus: float) -> list[dict[str, Any]]:
    """The alive nodes where one fold worker (`cpus`, `gpus`) fits."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")
            and node["Resources"].get("CPU", 0) >= cpus and node["Resources"].get("GPU", 0) >= gpus]


def check_fold_nodes(caches: dict[str, str], shared: dict[str, str], tracking_uri: str, cpus: float, gpus: float,
                     wait_seconds: float = WAIT_FOR_NODE_SECONDS) -> int:
    """Raise `NodeCheckError` naming each node and location a fold could not use; returns the nodes checked.
    `caches` (what -> path or URI) must be readable on the node (the head's copy or the node's own); `shared`
    folders (the storage path; a SQLite tracking store's folder) must be the very folder the driver writes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tfmamba.features.store import METADATA

    kind, target = _tracking_target(tracking_uri)
    if kind == "file":
        shared = {**shared, f"the MLflow store {tracking_uri}": target}
    probes = {what: str(folder / METADATA) for what, cache in caches.items()
              if (folder := local_path(cache)) is not None}
    written: list[Path] = []
    token = uuid.uuid4().hex
    for what, location in shared.items():
        folder = local_path(location)
        if folder is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{PROBE_PREFIX}{token}"
        probe.write_text("probe\n", encoding="utf-8")
        written.append(probe)
        probes[what] = str(probe)
    task = ray.remote(check_on_node)
    try:
        nodes = fold_nodes(cpus, gpus)
        if nodes:
            refs = [task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], False))
                    .remote(probes, (kind, target)) for node in nodes]
        else:
            logger.info("no node can hold a fold yet: checking the first one the autoscaler starts "
                        "(waiting up to %.0f s)", wait_seconds)
            refs = [task.options(num_cpus=cpus, num_gpus=gpus).remote(probes, (kind, target))]
        started = time.monotonic()
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=wait_seconds)
        for ref in pending:
            ray.cancel(ref, force=True)
        if pending:
            raise NodeCheckError(f"no node could hold a fold ({cpus:g} CPU, {gpus:g} GPU per worker) within "
                                 f"{time.monotonic() - started:.0f} s: check the cluster's worker types and "
                                 "--cpus-per-worker / --gpus-per-worker")
        reports = ray.get(ready)
    finally:
        for probe in written:
            probe.unlink(missing_ok=True)
    lines = [f"node {r['hostname']} ({r['ip']}, {r['node_id'][:12]}) cannot use {problem}"
             for r in reports for problem in r["problems"]]
    if lines:
        raise NodeCheckError("\n  ".join(["folds would fail on the cluster's worker nodes, which share no disk "
                                          "with the head:", *lines,
                                          "put the cache and --storage-path where every node reads them (s3://..., "
                                          "gs://..., or a shared filesystem) and run an MLflow server every node "
                                          "reaches (--mlflow-uri http://...)"]))
    logger.info("node check: %d node(s) can read the cache and storage and reach MLflow", len(reports))
    return len(reports)
