"""How many trials and folds run at once, from the cluster's resources and the per-fold request.

A trial is only a driver: it holds a tiny share of the custom resource `tfmamba_driver` (the
local Ray started by the sweep has it; on a cluster give it to the head or a CPU node in the
cluster config) and no CPU, so trial drivers never take the CPUs or GPUs their folds' Train
workers need (the deadlock of ray#54305). Without that resource a driver takes 0.1 CPU.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DRIVER_RESOURCE = "tfmamba_driver"
# Tune hands a finished trial's driver actor to the next trial (`TuneConfig(reuse_actors=REUSE_TRIAL_ACTORS)`): a lane
# goes from one trial to the next in ~1 s on 2 cores (as from fold to fold), where a new driver process took 3-6 s.
# So Tune runs only the trials that train (`max_concurrent_trials=Layout.max_concurrent`): a trial waiting behind each
# would be a driver process of its own (~4.5 s of CPU) starting with the sweep, beside its lanes.
REUSE_TRIAL_ACTORS = True
BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"  # the cluster config `ray up` leaves on the head


@dataclass(frozen=True)
class Layout:
    """Trials at once, folds at once per trial, the trial driver's resources, total fold slots."""

    max_concurrent: int
    parallel_folds: int
    trial_resources: dict[str, float]
    parallel_slots: int


def fold_slots(total: dict[str, float], workers: int, cpus: float, gpus: float) -> int:
    """How many folds (each `workers` x (`cpus`, `gpus`)) the cluster holds at once."""
    if gpus > 0:
        return int(total.get("GPU", 0) // (workers * gpus))
    return int(total.get("CPU", 0) // (workers * cpus))


def autoscaler_slots(workers: int, cpus: float, gpus: float, config: Path = BOOTSTRAP_CONFIG) -> int | None:
    """Fold slots of the cluster at its largest, from the launcher's config on the head (`ray up` writes it to
    ~/ray_bootstrap_config.yaml): the head's resources plus each worker type's at `max_workers` nodes (within
    the cluster's `max_workers`, the best-equipped types first). None without that file."""
    import yaml

    if not config.is_file():
        return None
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    types = data.get("available_node_types", {})
    head_type = data.get("head_node_type")
    total = Counter(types.get(head_type, {}).get("resources", {}))
    left = int(data.get("max_workers", 0))
    workers_first = sorted((t for name, t in types.items() if name != head_type),
                           key=lambda t: fold_slots(t.get("resources", {}), 1, cpus, gpus), reverse=True)
    for node_type in workers_first:
        count = min(int(node_type.get("max_workers", 0)), left)
        left -= count
        for key, value in node_type.get("resources", {}).items():
            total[key] += count * value
    return fold_slots(dict(total), workers, cpus, gpus)


def plan(workers: int, cpus: float, gpus: float, num_samples: int, n_folds: int,
         max_concurrent: int | None = None, parallel_folds: int | None = None,
         max_fold_slots: int | None = None, joined: bool = False, total: dict[str, float] | None = None) -> Layout:
    """Split the fold slots between concurrent trials and their folds. On a joined cluster the slots are those
    the cluster can reach (`max_fold_slots`, else its launcher config's), not only those present now: the folds
    waiting for a slot are the resource demand the autoscaler adds nodes for, and they start as nodes arrive.
    `total`: the cluster's resources (default: what the running Ray has)."""
    if total is None:
        import ray

        total = ray.cluster_resources()
    present = fold_slots(total, workers, cpus, gpus)
    if present < 1 and not joined:  # nothing would ever start: the sweep used to wait for it for good
        raise SystemExit(f"one fold needs {workers} worker(s) x {cpus:g} CPU / {gpus:g} GPU, more than this machine's "
                         f"private Ray has ({total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU), which does not "
                         "grow: lower --workers-per-fold, --cpus-per-worker or --gpus-per-worker, or join a cluster "
                         "that has them (--address)")
    if max_fold_slots and not joined and max_fold_slots > present:
        logger.warning("--max-fold-slots %d: this machine's private Ray does not grow; planning for its %d fold "
                       "slot(s) (the option is for a cluster joined with --address)", max_fold_slots, present)
        max_fold_slots = present
    reachable = max_fold_slots or (autoscaler_slots(workers, cpus, gpus) if joined else None)
    slots = max(present, reachable or 0)
    if slots > present:
        logger.info("%d fold slot(s) now; planning for %d as the autoscaler adds nodes", present, slots)
    elif slots < 1:
        logger.warning("the cluster (%s) cannot hold one fold of %d worker(s) x %s CPU / %s GPU yet, and no "
                       "--max-fold-slots says how far it grows; planning for 1", total, workers, cpus, gpus)
        slots = 1
    trials = max_concurrent or max(1, min(num_samples, slots))
    if parallel_folds and parallel_folds > slots:  # a trial waits for all its lanes at once: it would wait for good
        logger.warning("--parallel-folds %d: the cluster holds %d fold(s) at once; a trial trains %d at once",
                       parallel_folds, slots, slots)
        parallel_folds = slots
    folds = parallel_folds or max(1, min(n_folds, slots // trials))
    driver = {"cpu": 0, DRIVER_RESOURCE: 0.001} if total.get(DRIVER_RESOURCE) else {"cpu": 0.1}
    return Layout(trials, folds, driver, max(1, min(slots, trials * folds)))
