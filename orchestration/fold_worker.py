"""What each Ray Train worker runs: `tfmamba.train.train_fold` on one fold, reporting through Ray.

`RayReporter` adapts the library's `Reporter` protocol to Ray Train: every epoch goes to
`ray.train.report` with the epoch's checkpoint folder (so `Result.metrics` is set and a
restarted run resumes from `ray.train.get_checkpoint()`), and rank 0 also logs the epoch's
curves to the fold's MLflow run. The worker returns `FoldResult.to_dict()`, which the trial
reads from `Result.return_value`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestration import mlflow_runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldTask:
    """Everything a worker needs, as plain values (it travels in `train_loop_config`)."""

    config: dict[str, Any]
    fold: int
    manifest_dir: str
    cache: str
    out_dir: str
    tracking_uri: str
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RayReporter:
    """`tfmamba.train.Reporter` on top of `ray.train.report` / `ray.train.get_checkpoint`."""

    def __init__(self, task: FoldTask, rank: int) -> None:
        self.task = task
        self.rank = rank

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir is not None else None
        ray.train.report(dict(metrics), checkpoint=checkpoint)
        if self.rank == 0:
            self._log(metrics)

    def resume_dir(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        target = Path(self.task.out_dir) / f".resume-rank{self.rank}"
        folder = Path(checkpoint.to_directory(str(target)))
        logger.info("fold %d: resuming from Ray checkpoint %s", self.task.fold, checkpoint.path)
        return folder

    def _log(self, metrics: dict[str, float]) -> None:
        step = int(metrics.get("epoch", 0))
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "done")}
        if metrics.get("done"):  # the final report repeats the last epoch's row; only its test metrics are new
            values = {k: v for k, v in values.items() if k.startswith("test_")}
        try:
            mlflow_runs.log_metrics(self.task.tracking_uri, self.task.run_id, values, step=step)
        except Exception as err:  # tracking trouble must not stop training; the final log retries
            logger.warning("fold %d: could not log epoch %d to MLflow: %s", self.task.fold, step, err)


def train_fold_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The `train_loop_per_worker` of the fold's TorchTrainer; its `FoldResult` dict also names the node
    (Ray node id, IP, hostname) this worker ran on, and rank 0 tags the fold's MLflow run with them."""
    import socket

    import ray
    import ray.train

    from tfmamba.config import TrainConfig
    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.features.store import FeatureStore
    from tfmamba.folds import load_folds
    from tfmamba.train import train_fold

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task = FoldTask(**loop_config)
    rank = ray.train.get_context().get_world_rank()
    manifest = read_manifest(task.manifest_dir)
    fold = next(f for f in load_folds(task.manifest_dir, manifest) if f.index == task.fold)
    store = FeatureStore.open(task.cache)
    result = train_fold(TrainConfig.from_dict(task.config), fold, store, RayReporter(task, rank), manifest=manifest,
                        out_dir=task.out_dir, progress=False)
    outcome = result.to_dict() | {"node_id": ray.get_runtime_context().get_node_id(),
                                  "node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname()}
    if rank == 0:
        mlflow_runs.set_tags(task.tracking_uri, task.run_id,
                             {key: outcome[key] for key in ("node_id", "node_ip", "hostname")})
        mlflow_runs.log_metrics(task.tracking_uri, task.run_id, mlflow_runs.fold_summary_metrics(outcome),
                                step=result.epochs_run)
        mlflow_runs.log_fold_outputs(task.tracking_uri, task.run_id, task.out_dir)
    return outcome
