"""How many trials and folds run at once, from the cluster's resources and the per-fold request.

A trial is only a driver: it holds a tiny share of the custom resource `tfmamba_driver` (the
local Ray started by the sweep has it; on a cluster give it to the head or a CPU node in the
cluster config) and no CPU, so trial drivers never take the CPUs or GPUs their folds' Train
workers need (the deadlock of ray#54305). Without that resource a driver takes 0.1 CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DRIVER_RESOURCE = "tfmamba_driver"


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


def plan(workers: int, cpus: float, gpus: float, num_samples: int, n_folds: int,
         max_concurrent: int | None = None, parallel_folds: int | None = None) -> Layout:
    """Split the cluster's fold slots between concurrent trials and their folds."""
    import ray

    total = ray.cluster_resources()
    slots = fold_slots(total, workers, cpus, gpus)
    if slots < 1:
        logger.warning("the cluster (%s) cannot hold one fold of %d worker(s) x %s CPU / %s GPU yet; "
                       "waiting for the autoscaler", total, workers, cpus, gpus)
        slots = 1
    trials = max_concurrent or max(1, min(num_samples, slots))
    folds = parallel_folds or max(1, min(n_folds, slots // trials))
    driver = {"cpu": 0, DRIVER_RESOURCE: 0.001} if total.get(DRIVER_RESOURCE) else {"cpu": 0.1}
    return Layout(trials, folds, driver, max(1, min(slots, trials * folds)))
