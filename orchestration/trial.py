"""One Tune trial = one k-fold cross-validation on warm Ray Train workers, folds in parallel.

`run_trial` is the Tune function trainable (Ray Train V2 pattern: the trial is only a driver
of Train runs): it borrows one of the sweep's lanes (`fold_lanes`: a Train run of warm workers,
`fit_lane`) per fold slot of the trial and hands them its folds one after another, each fold with
its own MLflow run and its checkpoints. After each fold it reports the running mean over finished folds
to Tune (`folds_done` is the scheduler's time axis), with a small checkpoint listing the
finished folds, so a retried or restored trial skips them. The last report holds the mean
and std over folds of validation and test WA/UA/WF1; only the validation mean of the corpus's
selection metric steers (`objective`: `valid_wf1_mean` on MELD, `valid_ua_mean` elsewhere, the
metric that also picks each fold's best epoch; `SweepContext.metric`).

A report returns only once Tune's scheduler has judged it, and a lane gets its next fold only after
that: a trial ASHA stops starts no further fold (the stop arrives as SystemExit from `tune.report`),
its run is tagged `pruned`, its lanes go back to the sweep and folds still running on them are dropped
at their next epoch. With `--objectives` naming a cost, `params` / `latency_ms` are measured once per
trial on its lane's device and sent with every report (pareto.py).

Two options serve the ablation grids: `SweepContext.seeds` repeats every fold once per seed
(a separate fold run each, tagged `seed`; MELD's one official split over several seeds gives
mean ± std over seeds), and `row_caches` gives a grid row (the config's `row`) its own feature
cache, so each row of Table II trains on another pre-trained model's features.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from orchestration import mlflow_runs
from orchestration.console import trial_label, trial_number
from orchestration.fold_lanes import FoldLanes, hand_placement_group
from orchestration.fold_worker import LaneTask, train_lane_worker
from orchestration.search_space import SearchSpace

logger = logging.getLogger(__name__)

METRIC = "valid_ua_mean"  # the objective on every corpus but MELD; see `objective`
MODE = "max"
TIME_ATTR = "folds_done"
SUMMARY_KEYS = ("wa", "ua", "wf1")
DONE_FILE = "folds_done.json"
ROW_KEY = "row"
Unit = tuple[int, int | None]  # (fold, seed); seed None = the config's own seed, one run per fold


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (passed with `tune.with_parameters`)."""

    sweep_id: str
    space: SearchSpace
    manifest_dir: str
    cache: str
    folds: tuple[int, ...]
    out_root: str
    train_storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    parallel_folds: int = 1
    seeds: tuple[int, ...] = ()
    row_caches: dict[str, str] = field(default_factory=dict)
    metric: str = METRIC  # Tune's metric and mode: `objective(corpus, space)`
    mode: str = MODE
    # The folds' utterance lists, read once on the driver: they travel with every fold's task (the manifest with
    # each lane, `LaneSpec`), so a worker node needs no disk shared with the head (only the cache and the storage
    # path, by URI).
    splits: dict[int, Any] = field(default_factory=dict)
    dispatcher: str = ""  # the name of the sweep's `fold_lanes.FoldDispatcher` actor

    def units(self) -> list[Unit]:
        """The fold runs of one trial: each fold once, or once per seed."""
        return [(fold, seed) for fold in self.folds for seed in (self.seeds or (None,))]


def objective(corpus: str, space: SearchSpace | None = None) -> tuple[str, str]:
    """Tune's metric and mode for a sweep or grid on `corpus`: the mean over fold runs of the validation metric
    that picks each fold's best epoch (the space's base `select_metric`; "auto" is the corpus's own, declared in
    `tfmamba.corpora.SELECTION_METRICS`): ("valid_wf1_mean", "max") on MELD, ("valid_ua_mean", "max") elsewhere."""
    from tfmamba.config import TrainConfig

    config = space.base_config() if space is not None else TrainConfig()
    metric, higher_is_better = config.selection(corpus)
    return f"{metric}_mean", "max" if higher_is_better else "min"


def fold_metric(metric: str) -> str:
    """The fold run's MLflow metric behind a sweep metric: `valid_wf1_mean` -> `valid_wf1_best` (its best epoch's)."""
    from tfmamba.metrics import best_name

    return best_name(metric.removesuffix("_mean"))


def lane_run_name(sweep_id: str, lane: str) -> str:
    """A lane's Train run name (the lane trains folds of many trials; each checkpoint names its fold run)."""
    return f"{sweep_id}-{lane}"


def unit_key(unit: Unit) -> str:
    fold, seed = unit
    return str(fold) if seed is None else f"{fold}:{seed}"


def parse_unit(key: str) -> Unit:
    fold, _, seed = key.partition(":")
    return int(fold), int(seed) if seed else None


def summarize(results: dict[Any, dict[str, Any]], seeds: int = 1) -> dict[str, float]:
    """Mean and std over fold runs (folds x seeds) of valid/test WA, UA, WF1; `folds_done` = fold runs / seeds."""
    summary: dict[str, float] = {TIME_ATTR: len(results) / max(seeds, 1), "runs_done": float(len(results)),
                                 "seeds": float(max(seeds, 1))}
    for split in ("valid", "test"):
        for key in SUMMARY_KEYS + (("loss",) if split == "valid" else ()):
            values = [r[split][key] for r in results.values() if key in r.get(split, {})]
            if values:
                summary[f"{split}_{key}_mean"] = float(np.mean(values))
                summary[f"{split}_{key}_std"] = float(np.std(values))
    summary["train_seconds_sum"] = float(sum(r.get("train_seconds", 0.0) for r in results.values()))
    return summary


def fold_assignment(ctx: SweepContext, trial_id: str, config: dict[str, Any], unit: Unit) -> dict[str, Any]:
    """Open fold run `unit`'s MLflow run (found again if a retry made it before) and return what its lane's
    workers need for it (`fold_worker.FoldTask` without what the lane already has)."""
    fold, seed = unit
    suffix = "" if seed is None else f"-seed{seed}"
    tags = mlflow_runs.fold_tags(ctx.sweep_id, trial_id, fold) | ({} if seed is None else {"seed": str(seed)})
    config = config if seed is None else {**config, "seed": seed}
    run_id = mlflow_runs.get_or_create_run(ctx.tracking_uri, ctx.experiment_id, tags, f"{trial_id}-fold{fold}{suffix}",
                                           parent_run_id=_trial_run_id(ctx, trial_id))
    mlflow_runs.log_params(ctx.tracking_uri, run_id, {**config, "fold": fold})
    out_dir = Path(ctx.out_root) / trial_id / f"fold{fold}{suffix}"
    return {"key": unit_key(unit), "config": config, "split": ctx.splits[fold], "out_dir": str(out_dir),
            "run_id": run_id, "cache": ctx.cache}


@dataclass(frozen=True)
class LaneSpec:
    """What each lane's Train run is made of: known once Ray is up, before the sweep's MLflow run exists."""

    sweep_id: str
    train_storage: str
    tracking_uri: str
    manifest: Any
    workers_per_fold: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    costs: tuple[str, ...] = ()  # --objectives' costs (pareto.py), measured once per trial on the lane's device
    max_failures: int = 0  # Train restarts of the lane's worker group (the dispatcher bounds them per fold)
    local: bool = False  # the sweep's private one-machine Ray (no autoscaler: `lane_trainer`)


def fit_lane(spec: LaneSpec, lane: str, dispatcher: Any) -> Any:
    """Run lane `lane` of the sweep: a Train run (`lane_trainer`) whose workers train the folds `dispatcher` hands
    them, trial after trial, until it says stop. Train restarts a failed worker group up to `spec.max_failures` times;
    the dispatcher gives each fold `--fold-retries` more attempts."""
    import ray.train

    from orchestration.lane_trainer import lane_trainer

    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    task = LaneTask(lane=lane, dispatcher=dispatcher, manifest=spec.manifest, tracking_uri=spec.tracking_uri,
                    costs=spec.costs)
    keeper = partial(hand_placement_group, dispatcher, lane) if spec.local else None
    trainer = lane_trainer(spec.workers_per_fold, spec.local, keeper)(
        train_lane_worker,
        train_loop_config=task.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers_per_fold, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=lane_run_name(spec.sweep_id, lane),
            storage_path=spec.train_storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    return trainer.fit()


def _trial_run_id(ctx: SweepContext, trial_id: str) -> str:
    return mlflow_runs.get_or_create_run(ctx.tracking_uri, ctx.experiment_id,
                                         mlflow_runs.trial_tags(ctx.sweep_id, trial_id), trial_id,
                                         parent_run_id=ctx.parent_run_id)


def _load_done() -> dict[Unit, dict[str, Any]]:
    """Fold runs finished by an earlier attempt of this trial (from its last Tune checkpoint)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        data = json.loads((Path(folder) / DONE_FILE).read_text(encoding="utf-8"))
    return {parse_unit(k): v for k, v in data.items()}


def _report(done: dict[Unit, dict[str, Any]], trial_run_id: str, ctx: SweepContext,
            costs: dict[str, float] | None = None) -> None:
    """Send the running summary (and the trial's measured `costs`) to Tune, with the finished folds as checkpoint,
    and to MLflow."""
    from ray import tune

    summary = summarize(done, len(ctx.seeds)) | (costs or {})
    mlflow_runs.log_metrics(ctx.tracking_uri, trial_run_id, mlflow_runs.objective_first(summary, ctx.metric), step=len(done))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / DONE_FILE).write_text(json.dumps({unit_key(k): v for k, v in done.items()}), encoding="utf-8")
        tune.report(summary, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """The Tune trainable: cross-validate the sampled `config` over `ctx.folds`."""
    from ray import tune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trial_id = tune.get_context().get_trial_id()
    row = config.get(ROW_KEY)
    ctx = replace(ctx, cache=ctx.row_caches.get(row, ctx.cache)) if row is not None else ctx
    train_config = ctx.space.trial_config(config).to_dict()
    trial_run_id = _trial_run_id(ctx, trial_id)
    number = trial_number(Path(tune.get_context().get_trial_dir() or "").name)
    mlflow_runs.set_tags(ctx.tracking_uri, trial_run_id, {"mlflow.runName": trial_label(number, config)})
    mlflow_runs.log_params(ctx.tracking_uri, trial_run_id, {k: train_config.get(k, v) for k, v in config.items()})
    if row is not None or ctx.seeds:  # tags, not params: a resumed grid may read a row's cache from a new place
        mlflow_runs.set_tags(ctx.tracking_uri, trial_run_id, {"cache": ctx.cache, "seeds": ",".join(map(str, ctx.seeds))})
    done = _load_done()
    pending = [unit for unit in ctx.units() if unit not in done]
    if done:
        logger.info("trial %s: fold runs %s already finished, running %s", trial_id,
                    [unit_key(u) for u in done], [unit_key(u) for u in pending])
    if not pending:
        _finish(done, trial_run_id, ctx, _costs(done))
        return
    _cross_validate(ctx, trial_id, train_config, trial_run_id, done, pending, number)


def _cross_validate(ctx: SweepContext, trial_id: str, train_config: dict[str, Any], trial_run_id: str,
                    done: dict[Unit, dict[str, Any]], pending: list[Unit], number: int | None = None) -> None:
    """Train the `pending` fold runs on lanes borrowed from the sweep (trial `number` waits its turn for them),
    reporting to Tune after each; a lane gets its next fold only once the scheduler has judged the last report."""
    lanes = FoldLanes(trial_id, min(max(1, ctx.parallel_folds), len(pending)), ctx.dispatcher,
                      number if number is not None else 1 << 30)
    runs: dict[str, str] = {}  # unit key -> its fold run's id
    placed: dict[str, dict[str, str]] = {}  # unit key -> its lane and place on it (1 = the trial's first there)
    per_lane: Counter[str] = Counter()

    def assign(lane: str) -> None:
        task = fold_assignment(ctx, trial_id, train_config, pending.pop(0))
        runs[task["key"]] = task["run_id"]
        per_lane[lane] += 1
        placed[task["key"]] = {"lane": lane, "lane_position": str(per_lane[lane])}
        lanes.assign(lane, task)

    try:
        for lane in lanes.names:
            assign(lane)
        while lanes.busy:
            event = lanes.next_event()
            if event.error is not None:
                _fold_failed(ctx, trial_id, trial_run_id, event.key, runs, event.error)
            unit = parse_unit(event.key)
            mlflow_runs.set_tags(ctx.tracking_uri, runs[event.key],
                                 {"train_run": f"{ctx.train_storage}/{lane_run_name(ctx.sweep_id, event.lane)}",
                                  "out_dir": event.outcome["out_dir"], **placed[event.key]})
            mlflow_runs.end_run(ctx.tracking_uri, runs[event.key], "FINISHED")
            done[unit] = event.outcome
            key = ctx.metric.removeprefix("valid_").removesuffix("_mean")
            logger.info("trial %s: fold %s done (valid %s %.3f, test %s %.3f)", trial_id, event.key, key,
                        done[unit]["valid"].get(key, float("nan")), key, done[unit]["test"].get(key, float("nan")))
            if not pending and not lanes.busy:
                lanes.release()  # before the last report: the next trial finds the lanes free
            _finish(done, trial_run_id, ctx, _costs(done))  # blocks until Tune's scheduler has seen it; a stop raises SystemExit
            if pending:
                assign(event.lane)
    except SystemExit:
        if len(done) < len(ctx.units()):  # ASHA also says stop at its last rung, once every fold is done
            _pruned(ctx, trial_id, trial_run_id, sorted(parse_unit(key) for key in lanes.busy.values()))
        raise
    finally:
        lanes.release()  # a stopped or failed trial's lanes go back too; folds still running on them are dropped


def _costs(done: dict[Unit, dict[str, Any]]) -> dict[str, float]:
    """The trial's measured costs, as its lanes sent them with their folds' results."""
    return next((outcome["costs"] for outcome in done.values() if outcome.get("costs")), {})


def _fold_failed(ctx: SweepContext, trial_id: str, trial_run_id: str, key: str, runs: dict[str, str],
                 message: str) -> None:
    """Fold run `key` failed for good (its retries spent, or its lane's Train run ended): that fold run and the
    trial fail."""
    fold, _ = parse_unit(key)
    mlflow_runs.set_tags(ctx.tracking_uri, runs[key], {"error": message})
    mlflow_runs.end_run(ctx.tracking_uri, runs[key], "FAILED")
    failure = RuntimeError(f"trial {trial_id}, fold {fold} failed: {message}")
    mlflow_runs.set_tags(ctx.tracking_uri, trial_run_id, {"error": str(failure)})
    mlflow_runs.end_run(ctx.tracking_uri, trial_run_id, "FAILED")
    raise failure


def _pruned(ctx: SweepContext, trial_id: str, trial_run_id: str, running: list[Unit]) -> None:
    """The scheduler stopped this trial: tag its run `pruned` (its partial means stay) and end the fold runs
    still going as KILLED; their lanes drop them at their next epoch."""
    uri = ctx.tracking_uri
    try:
        mlflow_runs.set_tags(uri, trial_run_id, {"pruned": "true", "outcome": "stopped early"})
        mlflow_runs.end_run(uri, trial_run_id, "FINISHED")
        if running:
            logger.info("trial %s: stopped by the scheduler; stopping fold run(s) %s", trial_id,
                        [unit_key(u) for u in running])
        for run in mlflow_runs.find_runs(uri, ctx.experiment_id, mlflow_runs.trial_tags(ctx.sweep_id, trial_id)
                                         | {"run_kind": mlflow_runs.FOLD}, status="RUNNING"):
            mlflow_runs.set_tags(uri, run.info.run_id, {"pruned": "true"})
            mlflow_runs.end_run(uri, run.info.run_id, "KILLED")
    except Exception as err:  # the trial is stopping either way; the sweep's close_runs tidies up after it
        logger.warning("trial %s: could not mark it pruned in MLflow: %s", trial_id, err)


def _finish(done: dict[Unit, dict[str, Any]], trial_run_id: str, ctx: SweepContext,
            costs: dict[str, float] | None = None) -> None:
    """Report the finished folds; the trial's run is closed before the last report (Tune may stop the trial there)."""
    if len(done) == len(ctx.units()):
        mlflow_runs.end_run(ctx.tracking_uri, trial_run_id, "FINISHED")
    _report(done, trial_run_id, ctx, costs)
