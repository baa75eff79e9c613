"""The sweep's MLflow run tree: sweep -> trial -> fold, found again by tags so retries never duplicate.

Every run carries `sweep_id` and `run_kind` ("sweep", "trial" or "fold"); trial and fold runs
add `trial_id`, fold runs `fold`. `get_or_create_run` looks a run up by those tags before
creating it, so a retried trial or a resumed sweep writes into the run it had before, and
`mark_stale_runs` closes runs a killed process left RUNNING. Everything goes through an
explicit `MlflowClient` with run ids (the fluent API keeps its active run per thread, and
Tune runs trainables in their own threads).

A tracking server that is down for a while must not fail a trial: every function here retries
connection-type failures with exponential backoff for up to `default_retry_seconds()` (120 s,
$TFMAMBA_MLFLOW_RETRY_SECONDS) and then raises; `http_env()` bounds MLflow's own HTTP retries so
one attempt against a down server costs seconds, not minutes. Errors MLflow reports about the
request itself (a bad parameter, a missing run) are raised at once.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from orchestration.backoff import Outermost, call_with_backoff
from tfmamba.locations import sqlite_path

logger = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SWEEP, TRIAL, FOLD = "sweep", "trial", "fold"
# Files of a fold's output folder that go to its MLflow run (model files under model/).
FOLD_FILES = ("confusion.png", "history.csv", "metrics.json", "train_config.yaml")
MODEL_FILES = ("model.safetensors", "model.json")
# A trial's progress counters (trial.summarize): logged after its scores, so no MLflow view opens on them.
BOOKKEEPING_METRICS = ("folds_done", "runs_done", "seeds")
ENV_RETRY_SECONDS = "TFMAMBA_MLFLOW_RETRY_SECONDS"
# Tags of a fold run whose epoch metrics were buffered while the server was down (set by fold_worker.RayReporter).
GAP_TAG, GAP_SECONDS_TAG = "mlflow_gap_epochs", "mlflow_gap_seconds"
DEFAULT_RETRY_SECONDS = 120.0
# MLflow's own HTTP retries default to 7 with backoff factor 2 and a 120 s timeout: minutes per call on a down server.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                             "DEADLINE_EXCEEDED"})

_T = TypeVar("_T")
_outermost = Outermost()


def http_env() -> dict[str, str]:
    """MLflow HTTP client settings for the driver and the Ray workers: no hidden retries, a 10 s timeout
    (values already in the environment win)."""
    return {key: os.environ.get(key, value) for key, value in HTTP_ENV.items()}


def default_retry_seconds() -> float:
    """How long a call keeps retrying a down tracking server ($TFMAMBA_MLFLOW_RETRY_SECONDS, default 120)."""
    return float(os.environ.get(ENV_RETRY_SECONDS, DEFAULT_RETRY_SECONDS))


def is_transient(err: BaseException) -> bool:
    """A failure that may pass when the server is back: no connection, a timeout, a 5xx, a locked store."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code in TRANSIENT_CODES
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # a local file problem (an artifact, a store path) does not pass by waiting
    return isinstance(err, (OSError, TimeoutError))


def retried(func: Callable[..., _T]) -> Callable[..., _T]:
    """Retry `func` on transient failures with exponential backoff for `retry_seconds` (keyword, default
    `default_retry_seconds()`; 0 = one attempt). Calls nested in a retried call are tried once: the outer
    one retries."""

    @functools.wraps(func)
    def wrapper(*args: Any, retry_seconds: float | None = None, **kwargs: Any) -> _T:
        if _outermost.inside:
            return func(*args, **kwargs)
        budget = default_retry_seconds() if retry_seconds is None else retry_seconds
        return call_with_backoff(_outermost.attempt(func, *args, **kwargs), is_transient, budget,
                                 f"MLflow {func.__name__}", logger)

    return wrapper


def resolve_tracking_uri(cli_uri: str | None, cwd: Path | None = None,
                         env: Mapping[str, str] | None = None) -> str:
    """`--mlflow-uri`, else $MLFLOW_TRACKING_URI (of `env`, default os.environ), else `sqlite:///<cwd>/mlflow.db`
    (absolute, for workers)."""
    uri = cli_uri or (os.environ if env is None else env).get(ENV_URI)
    if not uri:
        return f"sqlite:///{(cwd or Path.cwd()).resolve() / DEFAULT_DB}"
    database = sqlite_path(uri)
    return f"sqlite:///{database.resolve()}" if database is not None and not database.is_absolute() else uri


def default_artifact_location(uri: str, experiment: str, cwd: Path | None = None) -> str | None:
    """Local stores keep artifacts in `./mlartifacts/<experiment>`; a tracking server decides itself."""
    if uri.startswith("sqlite:"):
        return ((cwd or Path.cwd()).resolve() / DEFAULT_ARTIFACTS / experiment).as_uri()
    return None


def client(uri: str):
    """An `MlflowClient` for `uri` (imported lazily: workers that never log do not pay for it)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@retried
def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing (on the driver, before any trial starts)."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def _filter(tags: Mapping[str, str]) -> str:
    return " AND ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


@retried
def find_runs(uri: str, experiment_id: str, tags: Mapping[str, str], status: str | None = None) -> list:
    """Active (not deleted) runs with all of `tags`, optionally only those with `status`."""
    return search_runs(uri, experiment_id, _filter(tags) + (f" AND attributes.status = '{status}'" if status else ""))


@retried
def get_or_create_run(uri: str, experiment_id: str, tags: Mapping[str, str], name: str,
                      parent_run_id: str | None = None) -> str:
    """The run with exactly these identifying `tags` (set back to RUNNING), or a new one."""
    mlflow_client = client(uri)
    found = find_runs(uri, experiment_id, tags)
    if found:
        run = sorted(found, key=lambda r: r.info.start_time)[0]
        if len(found) > 1:
            logger.warning("%d MLflow runs match %s; using the oldest, %s", len(found), dict(tags), run.info.run_id)
        if run.info.status != "RUNNING":
            mlflow_client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlflow_client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id


def sweep_tags(sweep_id: str) -> dict[str, str]:
    return {"sweep_id": sweep_id, "run_kind": SWEEP}


def trial_tags(sweep_id: str, trial_id: str) -> dict[str, str]:
    return {"sweep_id": sweep_id, "run_kind": TRIAL, "trial_id": trial_id}


def fold_tags(sweep_id: str, trial_id: str, fold: int) -> dict[str, str]:
    return {"sweep_id": sweep_id, "run_kind": FOLD, "trial_id": trial_id, "fold": str(fold)}


@retried
def mark_stale_runs(uri: str, experiment_id: str, sweep_id: str, keep: Iterable[str] = ()) -> int:
    """Set the sweep's trial and fold runs still RUNNING (their process is gone) to KILLED."""
    keep = set(keep)
    stale = [r for r in find_runs(uri, experiment_id, {"sweep_id": sweep_id}, status="RUNNING")
             if r.info.run_id not in keep and r.data.tags.get("run_kind") != SWEEP]
    mlflow_client = client(uri)
    for run in stale:
        mlflow_client.set_terminated(run.info.run_id, status="KILLED")
    if stale:
        logger.info("marked %d interrupted MLflow run(s) of sweep %s as KILLED", len(stale), sweep_id)
    return len(stale)


@retried
def log_metrics(uri: str, run_id: str, metrics: Mapping[str, Any], step: int = 0, timestamp_ms: int | None = None
                ) -> None:
    """Log the finite numeric values of `metrics` in one batch (at `timestamp_ms`, default now)."""
    from mlflow.entities import Metric

    now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


@retried
def logged_steps(uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which metric `key` of the run has values."""
    return {metric.step for metric in client(uri).get_metric_history(run_id, key)}


@retried
def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (the same values again on a retry are accepted by MLflow)."""
    from mlflow.entities import Param

    client(uri).log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


@retried
def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(key, str(value)[:5000]) for key, value in tags.items()])


@retried
def delete_tag(uri: str, run_id: str, key: str) -> None:
    client(uri).delete_tag(run_id, key)


@retried
def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


@retried
def get_run(uri: str, run_id: str):
    """The run (info, params, metrics, tags)."""
    return client(uri).get_run(run_id)


@retried
def search_runs(uri: str, experiment_id: str, query: str, order_by: list[str] | None = None,
                max_results: int = 10000) -> list:
    """Runs of the experiment matching an MLflow search `query`."""
    return client(uri).search_runs([experiment_id], query, order_by=order_by, max_results=max_results)


@retried
def get_experiment_by_name(uri: str, name: str):
    """The experiment called `name`, or None."""
    return client(uri).get_experiment_by_name(name)


@retried
def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local file into the run's artifacts (under `artifact_path`)."""
    client(uri).log_artifact(run_id, str(path), artifact_path=artifact_path)


@retried
def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


@retried
def download_artifacts(uri: str, run_id: str, path: str, dst: str | Path) -> Path:
    """Download the run's artifact `path` into the folder `dst`; returns the local copy."""
    return Path(client(uri).download_artifacts(run_id, path, str(dst)))


@retried
def log_fold_outputs(uri: str, run_id: str, out_dir: str | Path) -> None:
    """Log a fold's curves, confusion matrix, metrics and best weights (under `model/`) to its run."""
    out_dir = Path(out_dir)
    mlflow_client = client(uri)
    for name in FOLD_FILES:
        if (out_dir / name).exists():
            mlflow_client.log_artifact(run_id, str(out_dir / name))
    for name in MODEL_FILES:
        if (out_dir / name).exists():
            mlflow_client.log_artifact(run_id, str(out_dir / name), artifact_path="model")


def objective_first(metrics: Mapping[str, Any], objective: str) -> dict[str, Any]:
    """`metrics` reordered for a trial run: `objective` first, the bookkeeping counters last.

    MLflow lists a run's metrics in the order they were first logged (its `latest_metrics` rows), and the
    UI's run comparison opens its parallel-coordinates plot on the first metric the compared runs share:
    logged in this order, that is the sweep's objective, not `folds_done`."""
    first = {objective: metrics[objective]} if objective in metrics else {}
    last = {key: metrics[key] for key in BOOKKEEPING_METRICS if key in metrics and key != objective}
    return first | {k: v for k, v in metrics.items() if k not in first and k not in last} | last


def fold_summary_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """A fold's final numbers: validation at the best epoch (`valid_ua_best`: the last value of the running best
    the fold logged per epoch under the same name), test of those weights, timing, and how many utterances of each
    part the feature cache's build skipped (when any)."""
    from tfmamba.metrics import best_name

    metrics = {best_name(f"valid_{k}"): v for k, v in result.get("valid", {}).items()}
    metrics |= {f"test_{k}": v for k, v in result.get("test", {}).items() if k in ("wa", "ua", "wf1")}
    metrics |= {"best_epoch": result.get("best_epoch", 0), "epochs_run": result.get("epochs_run", 0),
                "train_seconds": result.get("train_seconds", 0.0)}
    metrics |= {f"skipped_{part}_utterances": n for part, n in result.get("skipped_when_built", {}).items() if n}
    return metrics


def report_logging_gaps(uri: str, experiment_id: str, sweep_id: str) -> None:
    """Print one line per fold run whose epoch metrics reached MLflow late (the server was down for a while)."""
    try:
        folds = find_runs(uri, experiment_id, {"sweep_id": sweep_id, "run_kind": FOLD}, retry_seconds=0)
    except Exception as err:
        print(f"MLflow: could not check for logging gaps ({str(err).splitlines()[0]})", flush=True)
        return
    for run in folds:
        tags = run.data.tags
        if tags.get(GAP_TAG):
            print(f"MLflow was unreachable for {tags.get(GAP_SECONDS_TAG, '?')} s during trial {tags['trial_id']} "
                  f"fold {tags['fold']}: epochs {tags[GAP_TAG]} were buffered and logged late", flush=True)
