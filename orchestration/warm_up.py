"""The driver's own set-up, done while Ray starts instead of after.

`ray.init` of a private local Ray mostly waits for Ray's processes to come up (on 2 cores about half the CPU is idle
for those ~4 s), whereas right after it the driver's imports of MLflow and Tune (~3 s of CPU) and the creation of a
new SQLite MLflow store's tables (~1.3 s) would compete with the lanes' start-up for both cores. `start_warm_up` does
them in a thread beside `ray.init`; `join` it before the driver's first MLflow call or import of Tune (two threads
creating one store's tables at once would clash, and two importing Tune at once can meet its modules
half-initialised). The store is opened only when asked (`open_store`: the private Ray, whose start does not fail
like a join can): a cluster that cannot be joined leaves no MLflow database behind.
"""

from __future__ import annotations

import logging
import threading

from orchestration import mlflow_runs

logger = logging.getLogger(__name__)


def start_warm_up(tracking_uri: str, open_store: bool) -> threading.Thread:
    """Import MLflow's client and Tune (the searcher and scheduler the sweep builds) in a thread; with `open_store`,
    also open the tracking store at `tracking_uri` (MLflow keeps it), creating a new SQLite store's tables."""
    thread = threading.Thread(target=_warm_up, args=(tracking_uri, open_store), name="warm-up", daemon=True)
    thread.start()
    return thread


def _warm_up(tracking_uri: str, open_store: bool) -> None:
    try:
        import mlflow.tracking  # noqa: F401

        if open_store and tracking_uri.startswith("sqlite:"):
            mlflow_runs.client(tracking_uri).search_experiments(max_results=1)
        import ray.tune  # noqa: F401
        from ray.tune.schedulers import ASHAScheduler  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch  # noqa: F401
    except Exception as err:  # the driver does the same work again, and reports what fails
        logger.debug("warm-up: %s", err)
