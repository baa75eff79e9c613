"""The sweep's MLflow run tree: sweep -> trial -> fold, found again by tags so retries never duplicate.

Every run carries `sweep_id` and `run_kind` ("sweep", "trial" or "fold"); trial and fold runs
add `trial_id`, fold runs `fold`. `get_or_create_run` looks a run up by those tags before
creating it, so a retried trial or a resumed sweep writes into the run it had before, and
`mark_stale_runs` closes runs a killed process left RUNNING. Everything goes through an
explicit `MlflowClient` with run ids (the fluent API keeps its active run per thread, and
Tune runs trainables in their own threads).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SWEEP, TRIAL, FOLD = "sweep", "trial", "fold"
# Files of a fold's output folder that go to its MLflow run (model files under model/).
FOLD_FILES = ("confusion.png", "history.csv", "metrics.json", "train_config.yaml")
MODEL_FILES = ("model.safetensors", "model.json")


def resolve_tracking_uri(cli_uri: str | None, cwd: Path | None = None) -> str:
    """`--mlflow-uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` (absolute, for workers)."""
    uri = cli_uri or os.environ.get(ENV_URI)
    if not uri:
        return f"sqlite:///{(cwd or Path.cwd()).resolve() / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def default_artifact_location(uri: str, experiment: str, cwd: Path | None = None) -> str | None:
    """Local stores keep artifacts in `./mlartifacts/<experiment>`; a tracking server decides itself."""
    if uri.startswith("sqlite:"):
        return ((cwd or Path.cwd()).resolve() / DEFAULT_ARTIFACTS / experiment).as_uri()
    return None


def client(uri: str):
    """An `MlflowClient` for `uri` (imported lazily: workers that never log do not pay for it)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


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


def find_runs(uri: str, experiment_id: str, tags: Mapping[str, str], status: str | None = None) -> list:
    """Active (not deleted) runs with all of `tags`, optionally only those with `status`."""
    query = _filter(tags) + (f" AND attributes.status = '{status}'" if status else "")
    return client(uri).search_runs([experiment_id], query, max_results=10000)


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


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
    """Log the finite numeric values of `metrics` in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (the same values again on a retry are accepted by MLflow)."""
    from mlflow.entities import Param

    client(uri).log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(key, str(value)[:5000]) for key, value in tags.items()])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


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


def fold_summary_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """A fold's final numbers: validation at the best epoch, test of those weights, timing."""
    metrics = {f"valid_{k}_best": v for k, v in result.get("valid", {}).items()}
    metrics |= {f"test_{k}": v for k, v in result.get("test", {}).items() if k in ("wa", "ua", "wf1")}
    metrics |= {"best_epoch": result.get("best_epoch", 0), "epochs_run": result.get("epochs_run", 0),
                "train_seconds": result.get("train_seconds", 0.0)}
    return metrics
