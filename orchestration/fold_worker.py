"""What each Ray Train worker runs: the folds its lane is handed (`fold_lanes`), each with
`tfmamba.training.fold.train_fold`, reporting through Ray.

`train_lane_worker` is a lane's `train_loop_per_worker`: it imports once, then claims folds from the
sweep's dispatcher, whichever trial they belong to, until told to stop; it holds one feature cache at a time
(`HeldCache`) and measures each trial's costs once. `RayReporter` adapts the library's `Reporter` protocol
to Ray Train: every epoch goes to `ray.train.report` with the checkpoint folder it wrote (if it wrote one:
`checkpoint_seconds`), marked with the fold run it belongs to (a restarted worker group resumes its fold from
`ray.train.get_checkpoint()` only if that is its fold's), rank 0 also logs the epoch's curves to the
fold's MLflow run, and a fold whose trial no longer wants it (stopped, failed) is dropped there.
Rank 0 hands each fold's `FoldResult` dict to the dispatcher, which passes it to the trial.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestration import mlflow_runs
from tfmamba.corpora.manifest import Manifest
from tfmamba.corpora.folds import Fold

logger = logging.getLogger(__name__)

ATTEMPTS_TAG = "attempt_nodes"  # the Ray node of each attempt of the fold, in order
RESUMED_TAG = "resumed_from_epoch"
SYSTEM_METRICS_SECONDS = 10.0
FOLD_MARKER = "ray_fold_run.txt"  # in each reported checkpoint: the MLflow run id of the fold it belongs to


@dataclass(frozen=True)
class FoldTask:
    """Everything a worker needs for one fold: the fold's utterance lists and the manifest themselves (the
    manifest travels once per lane in `train_loop_config`, the rest per fold through the dispatcher), so the
    worker reads no file of the head's; the cache by URI or a path every node sees."""

    config: dict[str, Any]
    split: Fold
    manifest: Manifest
    cache: str
    out_dir: str
    tracking_uri: str
    run_id: str  # the fold's MLflow run: identifies the fold to the dispatcher and marks its checkpoints
    key: str = ""  # the fold run's key in its trial (`trial.unit_key`)
    trial: str = ""

    @property
    def fold(self) -> int:
        return self.split.index

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


class FoldDropped(Exception):
    """The fold's trial no longer wants it (Tune stopped the trial, or it failed): the lane moves on."""


class RayReporter:
    """`tfmamba.training.fold.Reporter` on top of `ray.train.report` / `ray.train.get_checkpoint`.

    Rank 0's epoch curves go to MLflow with one attempt per epoch, so a down tracking server never
    slows training: rows that fail wait in `pending` (with their time) and go out, oldest first, with
    the next epoch's row; the final report (test metrics, or `failed`) flushes them with the bounded
    retries of `mlflow_runs`. The epochs logged late are the gap: a warning, and the fold run's tags
    `mlflow_gap_epochs` / `mlflow_gap_seconds`.
    """

    GAP_TAG = mlflow_runs.GAP_TAG

    def __init__(self, task: FoldTask, rank: int, wanted: Any = None, retry: bool = False) -> None:
        self.task = task
        self.rank = rank
        self.retry = retry  # an earlier attempt of this fold ran (and may have logged epochs this one trains again)
        self.wanted = wanted  # () -> bool, the same on every rank: False drops the fold after the epoch's report
        self.pending: list[tuple[int, int, dict[str, float]]] = []  # (step, time in ms, values)
        self.gap_epochs: list[int] = []
        self.gap_started: float | None = None
        self.logged_before: set[int] = set()  # epochs in MLflow when this attempt resumed

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = None
        if checkpoint_dir is not None:
            (Path(checkpoint_dir) / FOLD_MARKER).write_text(self.task.run_id, encoding="utf-8")
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(dict(metrics) | {"fold": self.task.fold}, checkpoint=checkpoint)  # the lane's fold now
        if self.rank == 0:
            self._log(metrics)
        if self.wanted is not None and not (metrics.get("done") or metrics.get("failed")) and not self.wanted():
            raise FoldDropped(f"fold {self.task.fold} of trial {self.task.trial}")

    def resume_dir(self) -> Path | None:
        """Ray's latest checkpoint of the lane if it is this fold's (None: `train_fold` falls back to the output
        folder's own); rank 0 first logs the epochs of the checkpoint it will resume from that MLflow lacks, and
        on a retry notes the epochs MLflow has, which it will not log again."""
        import shutil

        import ray.train

        from tfmamba.checkpoint import has_checkpoint
        from tfmamba.training.outputs import CHECKPOINT_DIR

        checkpoint = ray.train.get_checkpoint()
        folder = None
        if checkpoint is not None:
            target = Path(self.task.out_dir) / f".resume-rank{self.rank}"
            folder = Path(checkpoint.to_directory(str(target)))
            marker = folder / FOLD_MARKER
            if not marker.is_file() or marker.read_text(encoding="utf-8") != self.task.run_id:
                shutil.rmtree(folder, ignore_errors=True)  # the lane's checkpoint of an earlier fold
                folder = None
        if folder is not None:
            logger.info("fold %d: resuming from Ray checkpoint %s", self.task.fold, checkpoint.path)
            if self.rank == 0:
                self._tag_resume(folder)
        local = Path(self.task.out_dir) / CHECKPOINT_DIR
        resume_from = folder if folder is not None else local if has_checkpoint(local) else None
        if self.rank == 0 and (resume_from is not None or self.retry):
            self._log_missing_epochs(resume_from)
        return folder

    def _tag_resume(self, folder: Path) -> None:
        """Say on the fold's run that this attempt resumed from an earlier one's checkpoint (a worker or its node
        was lost: a spot reclaim, a crash), and from which epoch."""
        from tfmamba.checkpoint import read_progress

        epoch = read_progress(folder)["epoch"]
        try:
            mlflow_runs.set_tags(self.task.tracking_uri, self.task.run_id, {RESUMED_TAG: epoch}, retry_seconds=0)
        except Exception as err:
            logger.warning("fold %d: could not tag the resume: %s", self.task.fold, err)

    def _log_missing_epochs(self, folder: Path | None) -> None:
        """Note the epochs MLflow has (an earlier attempt logged them; trained again after an older checkpoint,
        they are not logged twice), and log those of the checkpoint `folder` it lacks: a worker killed after its
        report to Ray and before its MLflow call would otherwise leave a hole in the curves."""
        from tfmamba.checkpoint import read_progress

        try:
            logged = mlflow_runs.logged_steps(self.task.tracking_uri, self.task.run_id, "valid_ua", retry_seconds=0)
        except Exception as err:
            logger.warning("fold %d: cannot check which epochs MLflow has (%s)", self.task.fold, err)
            return
        self.logged_before = set(logged)
        if folder is None:
            return
        history = read_progress(folder)["history"]
        missing = [row for row in history if int(row["epoch"]) not in logged]
        if missing:
            logger.info("fold %d: logging epochs %s of the checkpoint that MLflow lacks", self.task.fold,
                        [int(row["epoch"]) for row in missing])
            now = int(time.time() * 1000)
            self.pending += [(int(row["epoch"]), now, {k: v for k, v in row.items() if k != "epoch"})
                             for row in missing]
            self.flush()

    def _log(self, metrics: dict[str, float]) -> None:
        step = int(metrics.get("epoch", 0))
        if step in self.logged_before and not (metrics.get("done") or metrics.get("failed")):
            return  # a lost attempt logged this epoch after the checkpoint this one resumed from: once per epoch
        values = {k: v for k, v in metrics.items() if k not in ("epoch", "done")}
        if metrics.get("done"):  # the final report repeats the last epoch's row; only its test metrics are new
            values = {k: v for k, v in values.items() if k.startswith("test_")}
        self.pending.append((step, int(time.time() * 1000), values))
        self.flush(final=bool(metrics.get("done") or metrics.get("failed")))

    def flush(self, final: bool = False) -> bool:
        """Log the pending rows (one attempt each, or retried when `final`); False if some are still pending."""
        uri, run_id = self.task.tracking_uri, self.task.run_id
        try:
            while self.pending:
                step, stamp, values = self.pending[0]
                mlflow_runs.log_metrics(uri, run_id, values, step=step, timestamp_ms=stamp,
                                        retry_seconds=None if final else 0)
                self.pending.pop(0)
        except Exception as err:  # tracking trouble must not stop training
            step = self.pending[-1][0]
            if step not in self.gap_epochs:
                self.gap_epochs.append(step)
            self.gap_started = self.gap_started or time.monotonic()
            logger.warning("fold %d: MLflow unreachable (%s); epoch %d's metrics are buffered (%d row(s) pending)%s",
                           self.task.fold, str(err).splitlines()[0][:200], step, len(self.pending),
                           "; giving up on them" if final else "")
            return False
        if self.gap_started is not None:
            seconds = time.monotonic() - self.gap_started
            self.gap_started = None
            logger.warning("fold %d: MLflow is back after %.0f s; epochs %s were logged late", self.task.fold, seconds,
                           ",".join(map(str, self.gap_epochs)))
            try:
                mlflow_runs.set_tags(uri, run_id, {self.GAP_TAG: ",".join(map(str, self.gap_epochs)),
                                                   mlflow_runs.GAP_SECONDS_TAG: f"{seconds:.1f}"}, retry_seconds=0)
            except Exception as err:
                logger.warning("fold %d: could not tag the MLflow gap: %s", self.task.fold, err)
        return True


class HeldCache:
    """The feature cache a lane's worker holds in memory: the one its current fold trains on, and no other.

    A lane trains whatever folds the dispatcher hands it, of every row of a grid, and each row of Table II has a
    cache of its own (on IEMOCAP's ~1.2 M frames, 1.9 GB at 768 dims to 3.2 GB at Whisper-large's 1280, in
    float16). Keeping every cache a lane had opened grew each worker towards all eight (~18 GB on IEMOCAP, ~33 GB
    on MELD; times the lanes of a node). The cache held is let go before the next one is read, so a worker never
    holds two. A row keeps the lanes it took until it ends, so a lane reads a row's cache once, not once a fold."""

    def __init__(self, open_cache: Any) -> None:
        self._open = open_cache
        self.uri: str | None = None
        self.store: Any = None

    def get(self, uri: str) -> Any:
        """The store of cache `uri`, read now unless it is the one held."""
        if uri != self.uri:
            self.uri, self.store = None, None
            gc.collect()  # a fold's frames may sit in a reference cycle (a library's kept exception) holding it
            self.store = self._open(uri)
            self.uri = uri
        return self.store


@dataclass(frozen=True)
class LaneTask:
    """What a lane's workers share (their `train_loop_config`): the dispatcher to claim folds from, the manifest,
    where MLflow is, and the costs (`pareto.COSTS`) to measure on this lane's device once per trial."""

    lane: str
    dispatcher: Any
    manifest: Manifest
    tracking_uri: str
    costs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


def train_lane_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The `train_loop_per_worker` of a lane's Train run: train the folds the dispatcher hands this lane, one
    after another and trial after trial, until it says stop; rank 0 hands each fold's `FoldResult` dict (plus the
    node it ran on and the trial's measured costs) to the dispatcher. Returns how many folds this attempt
    trained."""
    import socket

    import ray
    import ray.train

    from orchestration.fold_lanes import claim
    from tfmamba.features.store import FeatureStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lane = LaneTask(**loop_config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname()}
    held = HeldCache(FeatureStore.open)
    costs: dict[str, dict[str, float]] = {}  # trial id -> its measured costs
    trained, last = 0, None
    while (assignment := claim(lane.dispatcher, lane.lane, last)) is not None:
        task = FoldTask(**assignment, manifest=lane.manifest, tracking_uri=lane.tracking_uri)
        last = task.run_id
        if not on_every_rank(lambda: ray.get(lane.dispatcher.begin.remote(task.run_id)), world):
            continue  # its retries are spent: the dispatcher failed it

        def wanted(run_id: str = task.run_id) -> bool:
            return on_every_rank(lambda: ray.get(lane.dispatcher.wanted.remote(run_id)), world)

        try:
            outcome = train_one_fold(task, held.get(task.cache), rank, node, wanted)
        except FoldDropped as dropped:
            logger.info("%s dropped: its trial no longer wants it", dropped)
            continue
        except Exception as err:  # Train restarts the workers; the dispatcher counts the attempts
            ray.get(lane.dispatcher.failed.remote(task.run_id, f"{type(err).__name__}: {err}"))
            raise
        if rank == 0:
            if task.trial not in costs:
                costs[task.trial] = lane_costs(lane.costs, task.config, len(lane.manifest.labels), held.store.dim)
            ray.get(lane.dispatcher.finish.remote(task.run_id, outcome | {"costs": costs[task.trial]}))
        trained += 1
    return {"lane": lane.lane, "folds": trained}


def on_every_rank(decide: Any, world: int) -> Any:
    """Rank 0's `decide()`, the same on every rank of the lane (so they train, or skip, a fold together)."""
    if world == 1:
        return decide()
    from ray.train.collective import broadcast_from_rank_zero

    import ray.train

    return broadcast_from_rank_zero(decide() if ray.train.get_context().get_world_rank() == 0 else None)


def train_one_fold(task: FoldTask, store: Any, rank: int, node: dict[str, str], wanted: Any = None) -> dict[str, Any]:
    """Train one fold on this worker; its `FoldResult` dict names the node (Ray node id, IP, hostname) too, and
    rank 0 tags the fold's MLflow run with it and logs the fold's summary metrics and outputs. `wanted()` is asked
    after each epoch (FoldDropped when False)."""
    from tfmamba.config import TrainConfig
    from tfmamba.training.fold import train_fold

    earlier_attempts = record_attempt(task, node) if rank == 0 else 0
    monitor = system_metrics(task) if rank == 0 else None
    try:
        reporter = RayReporter(task, rank, wanted, retry=earlier_attempts > 0)
        result = train_fold(TrainConfig.from_dict(task.config), task.split, store, reporter,
                            manifest=task.manifest, out_dir=task.out_dir, progress=False)
    finally:
        if monitor is not None:
            monitor.finish()
    outcome = result.to_dict() | node
    if rank == 0:
        mlflow_runs.set_tags(task.tracking_uri, task.run_id, node)
        mlflow_runs.log_metrics(task.tracking_uri, task.run_id, mlflow_runs.fold_summary_metrics(outcome),
                                step=result.epochs_run)
        mlflow_runs.log_fold_outputs(task.tracking_uri, task.run_id, task.out_dir)
    return outcome


def lane_costs(costs: tuple[str, ...], config: dict[str, Any], num_classes: int, input_dim: int) -> dict[str, float]:
    """The trial's model costs its objectives name, measured on this worker's device (pareto.py)."""
    if not costs:
        return {}
    from orchestration.pareto import measure_costs
    from tfmamba.device import pick_device

    return measure_costs(config, num_classes, input_dim, costs, pick_device(None))


def record_attempt(task: FoldTask, node: dict[str, str]) -> int:
    """Tag the fold's run with the node this attempt runs on, and add it to the run's list of attempts (a fold
    moved by a lost node shows both); returns how many attempts came before this one (0 if MLflow cannot say)."""
    try:
        tags = mlflow_runs.get_run(task.tracking_uri, task.run_id).data.tags
        earlier = [n for n in tags.get(ATTEMPTS_TAG, "").split(",") if n]
        attempts = earlier + [node["node_id"][:12]]
        mlflow_runs.set_tags(task.tracking_uri, task.run_id, {**node, ATTEMPTS_TAG: ",".join(attempts)})
    except Exception as err:  # tracking trouble must not stop training; the final report tags the node again
        logger.warning("fold %d: could not tag its node in MLflow: %s", task.fold, err)
        return 0
    return len(earlier)


def system_metrics(task: FoldTask):
    """MLflow's system-metrics monitor on the fold's run (`system/cpu_utilization_percentage`, memory, disk,
    network, and GPU where pynvml sees one), published every `SYSTEM_METRICS_SECONDS`
    ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins) from a daemon thread of rank 0 (a fold shorter than that
    logs none); None when it cannot start (tracking trouble must not stop training)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(task.run_id, sampling_interval=SYSTEM_METRICS_SECONDS, resume_logging=True,
                                       tracking_uri=task.tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:
        logger.warning("fold %d: system metrics are not logged: %s", task.fold, err)
        return None
