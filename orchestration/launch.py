"""What every entry script does before and around `tuner.fit()`: name the run, check where results go,
start or join Ray, open the parent MLflow run, build or restore the Tuner.

The order is the same for the sweep and the ablation: `results_location` (storage, name, fold outputs,
the MLflow URI, preflight) -> data -> `start_ray` -> `open_parent_run` -> the Tuner. Nothing is
created in MLflow before Ray is up, so a cluster that cannot be joined leaves no run behind.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import pickletools
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestration import console, mlflow_runs, mlflow_ui, stop_signal
from orchestration.preflight import PreflightError, check_outputs, mlflow_locations
from orchestration.ray_cluster import RayJoinError, join_cluster, start_private_ray
from orchestration.resources import DRIVER_RESOURCE
from orchestration.study import study_storage_url
from orchestration.warm_up import start_warm_up
from tfmamba.cli import tolerate_narrow_consoles
from tfmamba.locations import absolute, is_uri, sqlite_path
from tfmamba.process_lock import LocationBusy, ProcessLock, acquire, held_by

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DRIVER_LOCKS: list[ProcessLock] = []  # held until the driver exits


def configure_console() -> None:
    """Logging format and MLflow client settings of every entry script (values already set win); a console that
    cannot write λ or ± gets `?` for them."""
    tolerate_narrow_consoles()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in mlflow_runs.http_env().items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


@dataclass(frozen=True)
class ResultsLocation:
    """Where one sweep or grid writes: Tune state under `storage/name`, Train runs, fold outputs, MLflow."""

    storage: str
    name: str
    tracking_uri: str
    experiment: str
    study_url: str | None = None  # a sweep's Optuna storage (study.study_storage_url); a grid has none
    also_writes: dict[str, str] = field(default_factory=dict)  # more local folders: a study's file, a grid's report

    @property
    def tune_path(self) -> str:
        return f"{self.storage}/{self.name}"

    @property
    def train_storage(self) -> str:
        return f"{self.storage}/{self.name}-train"

    @property
    def out_root(self) -> str:
        """The folds' output folders: beside the Tune results, or under /tmp for remote storage."""
        if is_uri(self.storage):
            return f"/tmp/tfmamba-sweeps/{self.name}-outputs"
        return f"{self.storage}/{self.name}-outputs"

    @property
    def folders(self) -> dict[str, str]:
        """Where it writes, by what goes there: checked before it starts, watched while it runs."""
        where = ({"Tune/Train storage": self.storage, "fold outputs": self.out_root}
                 | mlflow_locations(self.tracking_uri, self.experiment))
        return where | {what: folder for what, folder in self.also_writes.items() if folder not in where.values()}


def results_location(args: argparse.Namespace, new_name: Callable[[], str], what: str,
                     also_writes: dict[str, str] | None = None) -> ResultsLocation:
    """Resolve --storage-path, --name (or the newest run under the storage with --resume, or `new_name()`),
    the MLflow URI and a sweep's Optuna storage, check every location can be written, `also_writes`' folders
    too (exits naming each problem), and take the sweep's driver lock (exits naming the process that drives it
    already)."""
    storage = absolute(args.storage_path)
    name = args.name or (newest_run(storage, what) if args.resume else new_name())
    if args.resume and held_by(storage, driver_lock_name(name)) is None:  # a running driver: its lock says more
        check_saved(storage, name, what)
    if not args.resume and not is_uri(storage) and Path(storage, name).exists():
        raise SystemExit(f"{storage}/{name} already exists: add --resume to continue that {what}, "
                         "or pick another --name")
    tracking_uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    study_url = study_storage_url(tracking_uri, storage, args.study_storage) if what == "sweep" else None
    also_writes = dict(also_writes or {})
    if study_url and (study_file := sqlite_path(study_url)) is not None:
        also_writes["Optuna study storage (--study-storage)"] = str(study_file.parent)
    where = ResultsLocation(storage, name, tracking_uri, args.experiment, study_url, also_writes)
    try:
        check_outputs(where.folders, args.min_free_gb, where.tracking_uri)
    except PreflightError as err:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {err}") from None
    hold_driver_lock(storage, name, what)
    return where


def driver_lock_name(name: str) -> str:
    return f"{name}.driver"


def hold_driver_lock(storage: str, name: str, what: str) -> None:
    """One driver per sweep or grid (a second would run the first's trials again beside it, both failing): hold
    its lock until this process exits, or exit naming the process that holds it."""
    try:
        _DRIVER_LOCKS.append(acquire(storage, driver_lock_name(name)))
    except LocationBusy as err:
        raise SystemExit(f"{what} {name} is being run by another process ({err}): wait for it to end, or stop it "
                         f"(Ctrl-C) first; then --resume --name {name} continues it") from None


# Parent-run parameters a resumed sweep or grid may change: where its folds run, not what they compute.
RESOURCE_PARAMS = frozenset({"workers_per_fold", "gpus_per_worker"})


def parent_run_params(args: argparse.Namespace, folds: list[int], space: Any, **own: Any) -> dict[str, Any]:
    """The parameters of a sweep's or grid's parent run (what `check_resume` compares): its folds, base config,
    resources and fixed settings, plus its `own` (a sweep's trial count and seed, a grid's rows and seeds)."""
    return {**own, "folds": ",".join(map(str, folds)), "base_config": space.base,
            "workers_per_fold": args.workers_per_fold, "gpus_per_worker": args.gpus_per_worker,
            **{f"fixed.{key}": value for key, value in space.fixed.items()}}


def check_resume(where: ResultsLocation, params: dict[str, Any], kind: str, restart: str) -> None:
    """--resume continues a sweep or grid as it was started (Tune restores its trial count and search space; the
    folds resume their checkpoints): exit naming each option that differs from its first start, before Ray starts.
    `restart`: what to run instead (a new sweep or grid). Nothing to compare (no store, no run yet) is not an error
    here. Tune's saved state must be readable too (`unreadable_state`)."""
    problem = unreadable_state(where.tune_path)
    if problem:
        raise SystemExit(f"--resume: the saved state of {kind} {where.name} is cut short ({problem}), as when written "
                         f"to a full disk, so Tune cannot continue it. Its finished folds stay in MLflow (experiment "
                         f"{where.experiment!r}); {restart}")
    database = sqlite_path(where.tracking_uri)
    if database is not None and not database.is_file():
        return
    experiment = mlflow_runs.get_experiment_by_name(where.tracking_uri, where.experiment)
    runs = mlflow_runs.find_runs(where.tracking_uri, experiment.experiment_id,
                                 mlflow_runs.sweep_tags(where.name)) if experiment else []
    started = min(runs, key=lambda run: run.info.start_time).data.params if runs else {}  # the one resumed
    if not started:
        return
    now = {key: str(value) for key, value in params.items()}
    # A parameter the run does not have is newer than it, not a change, unless it is a --set setting.
    keys = {key for key in set(now) | set(started) if key in started or key.startswith("fixed.")} - RESOURCE_PARAMS
    differ = [f"{_as_typed(key, now.get(key))} (started with {_as_typed(key, started.get(key))})"
              for key in sorted(keys) if now.get(key) != started.get(key)]
    if differ:
        raise SystemExit(f"--resume continues {kind} {where.name} as it was started, but {', '.join(differ)}: "
                         f"drop those options to resume it; for other settings, {restart}")


def _walk_pickle(data: bytes) -> None:
    """Read a pickle's opcodes to its STOP without building anything; ValueError if it ends before."""
    for _ in pickletools.genops(data):
        pass


# Tune's saved state of a run: the newest file of each kind is the one `Tuner.restore` reads. Only the
# experiment state is JSON; the search algorithm's files are cloudpickles, whatever their names end in.
STATE_FILES = {"experiment_state-*.json": json.loads, "search_gen_state-*.json": _walk_pickle,
               "basic-variant-state-*.json": _walk_pickle, "searcher-state-*.pkl": _walk_pickle}


def _filesystem(location: str) -> tuple[Any, str]:
    """A pyarrow filesystem and the path inside it of a local path or a URI of Tune's storage."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(location) if is_uri(location) else (fs.LocalFileSystem(), location)


def unreadable_state(tune_path: str) -> str | None:
    """Which file of Tune's saved state at `tune_path` cannot be parsed, and why; None if each parses or there is
    none (`restore_tuner` says so). Pickles are walked opcode by opcode, nothing is unpickled."""
    from pyarrow import fs

    filesystem, root = _filesystem(tune_path)
    try:
        names = [info.base_name for info in filesystem.get_file_info(fs.FileSelector(root))]
    except OSError:  # no such folder: nothing saved there
        return None
    for pattern, parse in STATE_FILES.items():
        matching = fnmatch.filter(names, pattern)
        if not matching:
            continue
        newest = f"{root}/{max(matching)}"
        try:
            with filesystem.open_input_stream(newest) as stream:
                parse(stream.readall())
        except Exception as err:  # any parse error: JSONDecodeError, a pickle that ends before its STOP
            return f"{newest}: {type(err).__name__}: {err}"
    return None


def _as_typed(key: str, value: str | None) -> str:
    """A parent-run parameter as the option that sets it: `fixed.epochs` 3 -> `--set epochs=3`."""
    if key.startswith("fixed."):
        return f"--set {key.removeprefix('fixed.')}={value}" if value is not None else "no --set for it"
    if key == "base_config":
        return f"a space or grid on base config {value}"
    return f"--{key.replace('_', '-')} {value}"


TUNER_FILE = "tuner.pkl"  # the first file Tune saves in a run's folder; `Tuner.can_restore` looks for it


# How Tune's state tells a sweep (Optuna's searcher) from a grid (Tune's own grid search), and who runs each.
KIND_FILES = {"sweep": "search_gen_state-*.json", "grid": "basic-variant-state-*.json"}
KIND_SCRIPTS = {"sweep": "sweep.py", "grid": "ablation.py"}


def saved_runs(storage: str, what: str) -> list[str]:
    """The Tune runs of this kind (`sweep` or `grid`) under a local storage path that --resume can continue, oldest
    first (a run stopped before Tune first saved its state, of no known kind yet, among them)."""
    saved = sorted(Path(storage).glob(f"*/{TUNER_FILE}"), key=lambda path: path.stat().st_mtime)
    return [path.parent.name for path in saved if run_kind(str(path.parent)) in (what, None)]


def run_kind(tune_path: str) -> str | None:
    """`sweep` or `grid`, from the files of Tune's saved state at `tune_path`; None before its first save."""
    from pyarrow import fs

    filesystem, root = _filesystem(tune_path)
    names = [info.base_name for info in filesystem.get_file_info(fs.FileSelector(root))]
    return next((kind for kind, pattern in KIND_FILES.items() if fnmatch.filter(names, pattern)), None)


def newest_run(storage: str, what: str) -> str:
    """The newest Tune run of this kind under a local storage path (what --resume continues without --name)."""
    if is_uri(storage):
        raise SystemExit("--resume with a remote --storage-path needs --name")
    runs = saved_runs(storage, what)
    if not runs:
        raise SystemExit(f"--resume: no {what} to resume under {storage}")
    return runs[-1]


def check_saved(storage: str, name: str, what: str) -> None:
    """--resume --name NAME with nothing saved as NAME (a typo, another --storage-path): exit naming what is there,
    before anything is created. It used to start Ray and leave a RUNNING MLflow run of that name before Tune refused.
    A remote storage that cannot be read is left to the preflight check, which names it."""
    from pyarrow import fs

    try:
        filesystem, path = _filesystem(f"{storage}/{name}/{TUNER_FILE}")
        if filesystem.get_file_info(path).type == fs.FileType.File:
            kind = run_kind(f"{storage}/{name}")
            if kind in (what, None):
                return
            raise SystemExit(f"--resume: {name!r} under {storage} is a {kind}, not a {what}: continue it with "
                             f"`python orchestration/{KIND_SCRIPTS[kind]} --resume --name {name}` and the options "
                             f"it started with")
    except (OSError, ValueError):  # out of reach, or a scheme pyarrow has no filesystem for
        return
    there = "" if is_uri(storage) else f" ({what}s saved there: {', '.join(saved_runs(storage, what)) or 'none'})"
    raise SystemExit(f"--resume: no {what} named {name!r} under {storage}{there}; check --name and --storage-path")


# Train's controller checks its workers every 2 s by default, so a lane's Train run ended up to 2 s (and on 2 cores
# ~4 s) after its last fold; 0.5 s costs one small call per worker and lane (a value in the environment wins).
TRAIN_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# A private local Ray is one machine that no one drains: each lane's Train run would still start a preemption
# watcher (an actor process, ~1.5 s of CPU at the sweep's start, then a poll every 5 s) for node drain notices
# that cannot come. A joined cluster (spot nodes) keeps it. A value in the environment wins.
PRIVATE_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


_WARM_UP: list[threading.Thread] = []  # `warm_up` threads started beside Ray's start, joined by `join_warm_up`


def start_ray(address: str | None, tracking_uri: str, verbose: bool = True) -> None:
    """Join the cluster at `address`, or start a private local Ray (with the trial-driver resource); the
    Ray workers get the MLflow URI, bounded MLflow HTTP settings and Train's poll interval. Exits with one line
    if joining fails. The driver's MLflow and Tune set-up is warmed up meanwhile (`warm_up`). Unless `verbose`,
    the workers' output stays in Ray's log files (`console.quiet_ray`), whose place is printed."""
    console.quiet_ray(verbose)  # before Ray's import: it reads RAY_LOG_TO_DRIVER then
    import ray

    env = {mlflow_runs.ENV_URI: tracking_uri, "PYTHONUNBUFFERED": "1", **mlflow_runs.http_env(),
           mlflow_runs.ENV_RETRY_SECONDS: str(mlflow_runs.default_retry_seconds()),
           **{key: os.environ.get(key, value) for key, value in TRAIN_POLL_ENV.items()}}
    runtime_env = {"env_vars": env}
    _WARM_UP.append(start_warm_up(tracking_uri, open_store=address is None))
    if address is None:
        env.update({key: os.environ.get(key, value) for key, value in PRIVATE_TRAIN_ENV.items()})
        session = start_private_ray(os.cpu_count(), {DRIVER_RESOURCE: 1000}, runtime_env)
        print(f"Started a private local Ray for this run ({os.cpu_count()} CPUs; logs in {session}/logs); "
              "--address auto would join the machine's running cluster instead", flush=True)
    else:
        try:
            join_cluster(address, runtime_env)
        except RayJoinError as err:
            raise SystemExit(f"{Path(sys.argv[0]).stem}: {err}") from None
    stop_signal.watch_ray(_gcs_address())  # over ray.init's SIGTERM handler
    logger.info("Ray cluster resources: %s", ray.cluster_resources())
    if not verbose:
        console.announce_worker_logs()


def join_warm_up() -> None:
    """Wait for `start_ray`'s warm-up: before the driver's first MLflow call or import of Tune (two threads importing
    Tune at once can meet its modules half-initialised)."""
    while _WARM_UP:
        _WARM_UP.pop().join()


def check_fold_nodes(args: argparse.Namespace, where: ResultsLocation, caches: dict[str, str]) -> None:
    """On a joined cluster, before any trial: the nodes that will run folds must read the caches and the storage
    path and reach the tracking server (a private local Ray is one machine: nothing to check). Exits naming
    each node and location that would fail."""
    if args.address is None:
        return
    from orchestration.node_check import NodeCheckError, check_fold_nodes as check

    try:
        check({what: cache for what, cache in caches.items() if cache}, {"--storage-path": where.storage},
              where.tracking_uri, args.cpus_per_worker, args.gpus_per_worker)
    except NodeCheckError as err:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {err}") from None


def _gcs_address() -> str | None:
    """Where the cluster's GCS listens; None through Ray Client (`ray://`), which does not say."""
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client's context has no GCS client
        return None


def open_parent_run(where: ResultsLocation, run_name: str, tags: dict[str, Any], params: dict[str, Any],
                    files: dict[str, str], texts: dict[str, str], resume: bool) -> tuple[str, str]:
    """The experiment id and the sweep's (or grid's) parent run, created or found again by its tags. A new
    run gets `params`, the `files` (local path -> artifact folder) and `texts` (artifact path -> text); a
    resumed one keeps those of its first start, and its runs a killed driver left RUNNING are closed."""
    uri = where.tracking_uri
    join_warm_up()
    experiment_id = mlflow_runs.ensure_experiment(uri, where.experiment,
                                                  mlflow_runs.default_artifact_location(uri, where.experiment))
    run_id = mlflow_runs.get_or_create_run(uri, experiment_id, mlflow_runs.sweep_tags(where.name), run_name)
    mlflow_runs.set_tags(uri, run_id, {"storage_path": where.tune_path, **tags})
    mlflow_ui.dress_parent_run(uri, experiment_id, run_id)
    if not mlflow_runs.get_run(uri, run_id).data.params:
        mlflow_runs.log_params(uri, run_id, params)
        for path, folder in files.items():
            mlflow_runs.log_artifact(uri, run_id, path, folder)
        for artifact, text in texts.items():
            mlflow_runs.log_text(uri, run_id, text, artifact)
    if resume:
        mlflow_runs.mark_stale_runs(uri, experiment_id, where.name)
    stop_signal.remember_runs(stop_signal.OpenRuns(uri, experiment_id, where.name, run_id))
    return experiment_id, run_id


def trainable(ctx: Any, trial_resources: dict[str, float]):
    """The trial function with the sweep's context and the trial driver's resources (`start_lanes` does not wait for
    the lanes: their start overlaps the MLflow runs, the Tuner's set-up and the trial drivers')."""
    from ray import tune

    from orchestration.trial import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources)


# Tune adds a CSV, a JSON and a TensorBoard logger to every run unless this is "1". The TensorBoard writer imports
# torch into the driver (~1.3 s of CPU) before the first trial starts, while the lanes start on the same cores,
# and nothing here reads its event files (trials are compared in MLflow). A value in the environment wins.
TUNE_AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def result_loggers() -> list[Any]:
    """Tune's per-trial result logs a run keeps: `result.json` and `progress.csv` (what Tune's `ExperimentAnalysis`
    and a resumed run read), without the TensorBoard event files (`TUNE_AUTO_LOGGERS_ENV`; set it to 0 to get
    them back)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ.setdefault(TUNE_AUTO_LOGGERS_ENV, "1")
    return [CSVLoggerCallback(), JsonLoggerCallback()]


def restore_tuner(path: str, trainable_fn, what: str):
    """The Tuner saved at `path`, to go on with its unfinished and errored trials (finished ones stay)."""
    from ray import tune

    if not tune.Tuner.can_restore(path):
        raise SystemExit(f"--resume: no restorable {what} at {path}")
    os.environ.setdefault(TUNE_AUTO_LOGGERS_ENV, "1")  # the saved run config holds its `result_loggers()`
    logger.info("resuming %s from %s", what, path)
    return tune.Tuner.restore(path, trainable=trainable_fn, resume_unfinished=True, resume_errored=True)


def dated_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_lanes(args: argparse.Namespace, where: ResultsLocation, manifest: Any, lanes: int, fold_runs: int,
                costs: tuple[str, ...] = ()) -> str:
    """Start the sweep's fold dispatcher with `lanes` lanes (Train runs of warm workers, `fold_lanes`) as soon as
    Ray is up, so their start-up overlaps the rest of the set-up; returns the dispatcher's name. `fold_runs`, of
    the whole sweep, bounds each lane's Train restarts."""
    from functools import partial

    from orchestration.fold_lanes import start_dispatcher
    from orchestration.trial import LaneSpec, fit_lane

    retries = args.fold_retries
    spec = LaneSpec(where.name, where.train_storage, where.tracking_uri, manifest, args.workers_per_fold,
                    args.cpus_per_worker, args.gpus_per_worker, costs, (retries + 1) * fold_runs if retries else 0,
                    local=args.address is None)
    return start_dispatcher(where.name, partial(fit_lane, spec), lanes, retries, wait=False)


def sweep_context(where: ResultsLocation, data: Any, space: Any, experiment_id: str, parent_run_id: str,
                  parallel_folds: int, manifest: Any, dispatcher: str, **extra: Any):
    """What every trial of this sweep or grid shares, from what was set up (the corpus's `manifest`, the name of
    the sweep's `dispatcher`, from `start_lanes`)."""
    from orchestration.trial import SweepContext
    from tfmamba.corpora.folds import load_folds

    splits = {fold.index: fold for fold in load_folds(data.manifest_dir, manifest) if fold.index in data.folds}
    return SweepContext(sweep_id=where.name, space=space, manifest_dir=data.manifest_dir, cache=data.cache,
                        folds=data.folds, out_root=where.out_root, train_storage=where.train_storage,
                        tracking_uri=where.tracking_uri, experiment_id=experiment_id, parent_run_id=parent_run_id,
                        parallel_folds=parallel_folds, splits=splits, dispatcher=dispatcher, **extra)
