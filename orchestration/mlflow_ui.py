"""What makes a sweep or an ablation grid read well in the MLflow UI (3.x): the experiment opens on the
model-training view and the parent run carries MLflow's standard source/git tags; a sweep's run also gets
best-so-far metrics stepped per finished trial (a Tune callback, while the sweep runs) and, at the end, Optuna's
optimisation-history, parameter-importance and parallel-coordinate plots of the sweep's study as artifacts."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

from orchestration import mlflow_runs

logger = logging.getLogger(__name__)

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # not the GenAI overview
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
ROOT = Path(__file__).resolve().parent.parent


def git_tags() -> dict[str, str]:
    """MLflow's standard source tags (the UI shows them as the run's source and commit), and `git_commit`: the
    commit with `-dirty` for uncommitted changes to tracked files, or "unknown" outside a checkout."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": Path(sys.argv[0]).name or "sweep.py"}
    commit = git("rev-parse", "HEAD")
    for key, value in (("mlflow.source.git.commit", commit),
                       ("mlflow.source.git.branch", git("rev-parse", "--abbrev-ref", "HEAD")),
                       ("mlflow.source.git.repoURL", git("config", "--get", "remote.origin.url"))):
        if value:
            tags[key] = value
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    tags["git_commit"] = (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    return tags


def dress_parent_run(uri: str, experiment_id: str, run_id: str) -> None:
    """The experiment's kind (else MLflow 3's UI opens it on the GenAI traces overview, empty) and the sweep's or
    grid's parent run's source tags."""
    mlflow_runs.retried(lambda: mlflow_runs.client(uri).set_experiment_tag(
        experiment_id, *next(iter(EXPERIMENT_KIND.items()))))()
    mlflow_runs.set_tags(uri, run_id, git_tags())


def experiment_page(base: str, experiment_id: str) -> str:
    """The experiment's runs in the UI at `base`: MLflow 3's UI opens an experiment on the GenAI traces overview
    (empty here) unless the link asks for the model-training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def compare_page(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's side-by-side page of `run_ids` (parallel coordinates of their parameters against the metric, their
    parameters and metrics in one table), in the model-training view."""
    def listed(values: list[str]) -> str:
        return quote(json.dumps(values, separators=(",", ":")), safe="")
    return (f"{base.rstrip('/')}/#/compare-runs?runs={listed(run_ids)}&experiments={listed([experiment_id])}"
            "&workflowType=machine_learning")


def ui_command(uri: str, experiment_id: str, compare: list[str] | None = None) -> str:
    """How to look at the experiment: its page on a tracking server, else the `mlflow ui` command for the store;
    with two or more `compare` run ids, a second line with the page that sets those runs side by side."""
    if uri.startswith(("http://", "https://")):
        base = uri
        text = f"open {experiment_page(base, experiment_id)} (on a cluster: ray attach cluster.yaml -p 5000 first)"
    else:
        base = "http://127.0.0.1:5000"
        text = (f"mlflow ui --backend-store-uri {shlex.quote(uri)} --port 5000   # then open "
                f"{experiment_page(base, experiment_id)}")
    if compare and len(compare) > 1:
        text += f"\n  side by side: {compare_page(base, experiment_id, compare)}"
    return text


def log_study_plots(uri: str, run_id: str, storage_url: str, study_name: str, metric_names: list[str]) -> list[str]:
    """Optuna's plots of the sweep's study (matplotlib, PNG) under `optuna/` of the sweep run; returns the
    artifact paths. A plot Optuna cannot draw yet (importance needs 2+ finished trials) is skipped with a note."""
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        logger.info("Optuna plots skipped: no trial of study %s is complete", study_name)
        return []
    logged = []
    single = len(study.directions) == 1
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" and few-trial notes, once per plot and sweep
        for name in PLOTS if single else ("pareto_front",):
            try:
                kwargs = {"target_name": metric_names[0]} if single else {"target_names": metric_names}
                axes = getattr(plots, f"plot_{name}")(study, **kwargs)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                path = Path(tmp) / f"{name}.png"
                figure.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(figure)
                mlflow_runs.log_artifact(uri, run_id, path, "optuna")
                logged.append(f"optuna/{name}.png")
            except Exception as err:  # too few trials for this plot, or nothing finished
                logger.info("Optuna %s plot skipped: %s", name, str(err).splitlines()[0] if str(err) else err)
    return logged
