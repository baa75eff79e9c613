"""Download the files of an MLflow model URI (`runs:/<run id>/<name>`, `models:/<name>/<version>`,
`models:/<name>@<alias>`, `models:/<logged model id>`) from one named tracking store, or of an artifact URI
MLflow reads (`file://`, `s3://`, `gs://`, `mlflow-artifacts:/`: the location the MLflow UI shows for a model).

MLflow 3.17 looks a `models:/` URI up with a client of its own global tracking URI, whatever URIs
`download_artifacts` is given, and a `runs:/` URI that names a logged model ends in that lookup too;
in a fresh process that global store is a new, empty ./mlflow.db. Here every lookup goes through a
client of the given store, and only the artifact location found reaches `download_artifacts`.
Imported only for MLflow URIs: the library runs without MLflow.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

MLFLOW_SCHEMES = ("runs:/", "models:/")
BEST_MODEL_TAG = "best_model_uri"  # the tag a sweep's run names its best model by (orchestration.results sets it)
MAX_CHILDREN_LOOKED_AT = 50


def is_mlflow_uri(ref: str) -> bool:
    """True for a URI MLflow looks up in a tracking store (`runs:/`, `models:/`)."""
    return str(ref).startswith(MLFLOW_SCHEMES)


def is_artifact_uri(ref: str) -> bool:
    """True for any other `scheme:` URI (`file://`, `s3://`, `mlflow-artifacts:/`, ...): files MLflow downloads
    by their artifact repository. A one-letter scheme is a Windows drive, not a URI."""
    return not is_mlflow_uri(ref) and len(urlparse(str(ref)).scheme) > 1


def download_model(ref: str, tracking_uri: str, into: str | Path) -> Path:
    """The files `ref` points at, downloaded under `into`, every lookup made in the store at `tracking_uri`
    (the registry included)."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    if is_artifact_uri(ref):  # no store is opened (a default ./mlflow.db would be created)
        location = ref
    else:
        location = artifact_location(ref, MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(into),
                                                    tracking_uri=tracking_uri))


def artifact_location(ref: str, client) -> str:
    """Where the files of `ref` are: a logged model's or a registered version's artifact location, or `ref`
    itself for files logged in a run (which `download_artifacts` finds in the store it is given)."""
    if ref.startswith("models:/"):
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        found = get_model_name_and_version(client, ref)  # (model id,) or (name, version): aliases, "latest"
        if len(found) == 1:
            return client.get_logged_model(found[0]).artifact_location
        return client.get_model_version_download_uri(*found)
    run_id, _, path = ref.removeprefix("runs:/").partition("/")
    name, _, inside = path.partition("/")
    model = logged_model_of_run(client, run_id, name) if name else None
    if model is None:
        return ref
    return f"{model.artifact_location}/{inside}" if inside else model.artifact_location


def logged_model_of_run(client, run_id: str, name: str):
    """The logged model `name` whose source is run `run_id`, or None."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(experiment_ids=[experiment_id], max_results=1,
                                        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'")
    return found[0] if found else None



def models_near(ref: str, tracking_uri: str) -> str:
    """Where to find a model when `runs:/<id>/<name>` names a run without one (a sweep's or a trial's run): the
    run's best-model tag, else a child run that logs `<name>`. '' when there is nothing to suggest."""
    if not ref.startswith("runs:/"):
        return ""
    from mlflow import MlflowClient

    run_id, _, path = ref.removeprefix("runs:/").partition("/")
    name = path.partition("/")[0] or "model"
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        if run.data.tags.get(BEST_MODEL_TAG):
            return f"run {run_id} logs no {name}; its best model is {run.data.tags[BEST_MODEL_TAG]}"
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=MAX_CHILDREN_LOOKED_AT)
        for child in children:
            if client.list_artifacts(child.info.run_id, name):
                return (f"run {run_id} logs no {name}; its run {child.info.run_name or child.info.run_id} does: "
                        f"runs:/{child.info.run_id}/{name}")
    except Exception:  # a hint only: the error it adds to stands on its own
        return ""
    return ""
