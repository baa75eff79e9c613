"""A model folder logged as a sweep logs its best model, in a fresh SQLite MLflow: a fold run holding `model/`
and a trial run with the pyfunc model (test_predict's MLflow URIs, test_registry's versions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoggedModel:
    uri: str  # the tracking URI
    fold_run_id: str  # its model/ holds model.safetensors and model.json
    trial_run_id: str  # its model/ is the pyfunc model
    model_uri: str  # what log_best_model returned


def log_model(root: Path, model_dir: Path, experiment: str, registered_name: str | None) -> LoggedModel:
    """Log `model_dir` (the trainer's output format) under `root` (mlflow.db, artifacts/); registered as
    `registered_name` unless None."""
    from mlflow.tracking import MlflowClient

    from orchestration.model_export import log_best_model

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    fold_run, trial_run = client.create_run(experiment_id), client.create_run(experiment_id)
    for name in ("model.safetensors", "model.json"):
        client.log_artifact(fold_run.info.run_id, str(model_dir / name), artifact_path="model")
    model_uri = log_best_model(uri, trial_run.info.run_id, fold_run.info.run_id, registered_name=registered_name)
    return LoggedModel(uri, fold_run.info.run_id, trial_run.info.run_id, model_uri)
