"""The sweep's Optuna study, kept in a database so it outlives the sweep: `optuna-dashboard` can show it,
`--resume` continues it and `--warm-start SWEEP` seeds a new sweep with an earlier one's finished trials.

Where the study lives (`study_storage_url`): Optuna cannot share MLflow's own database (both keep an
`alembic_version` table), so an MLflow SQLite file `.../mlflow.db` gets `.../optuna.db` beside it;
with a tracking server the studies go to `optuna.db` beside the Tune state (local storage) or under
/tmp/tfmamba-sweeps on the driver's node (remote storage). `--study-storage URL` picks any Optuna
RDB URL instead (e.g. PostgreSQL). Each sweep is one study, named after the sweep.

The searcher itself is `pruned_search.ProjectOptunaSearch` (it imports Ray; this module does not).
"""

from __future__ import annotations

import logging
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from tfmamba.errors import first_line
from tfmamba.locations import is_uri, sqlite_path

logger = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"
ENV_RETRY_SECONDS = "TFMAMBA_STUDY_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0  # a PostgreSQL restart or failover; training goes on meanwhile
REMOTE_FALLBACK = Path("/tmp/tfmamba-sweeps")


class StudyError(ValueError):
    """A study that cannot be used (a warm start from a sweep that is not there, directions that differ)."""


def study_storage_url(tracking_uri: str, storage: str, override: str | None = None) -> str:
    """The Optuna RDB URL of the sweeps' studies (see the module docstring)."""
    if override:
        return override
    database = sqlite_path(tracking_uri)
    if database is not None:
        return f"sqlite:///{database.parent / STUDY_FILE}"
    folder = REMOTE_FALLBACK if is_uri(storage) else Path(storage)
    return f"sqlite:///{folder / STUDY_FILE}"


def open_storage(url: str):
    """An Optuna RDB storage at `url` (a SQLite file's folder is created), or StudyError naming the URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines in the console
    if (database := sqlite_path(url)) is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StudyError(f"Optuna storage {url}: cannot make its folder {database.parent} "
                             f"({err.strerror or err})") from None
    # a database server's pooled connections die with a restart: test each before use (one round trip)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    from orchestration.patient_storage import PatientRDBStorage

    try:
        return PatientRDBStorage(url, engine_kwargs=engine)
    except Exception as err:
        raise StudyError(f"Optuna storage {url}: {err}") from None


def storage_retry_seconds() -> float:
    """How long the sweep waits for its study's database to answer again before it gives up."""
    return float(os.environ.get(ENV_RETRY_SECONDS, DEFAULT_RETRY_SECONDS))


def database_error(err: BaseException) -> str:
    """The database driver's own words for `err` (Optuna's wrapper blames "invalid data in the commit")."""
    while err.__cause__ is not None:
        err = err.__cause__
    return first_line(getattr(err, "orig", None) or err)  # a SQLAlchemy DBAPIError holds the driver's error


def lost_connection(err: BaseException) -> bool:
    """True for a database that does not answer (refused, dropped, restarting, a locked SQLite file), whether
    Optuna wrapped it in StorageInternalError or not; False for errors of the data, which no wait mends."""
    from sqlalchemy import exc

    while err is not None:
        if isinstance(err, (exc.OperationalError, exc.InterfaceError)):
            return True
        err = err.__cause__
    return False


def study_exists(storage, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def dashboard_command(url: str) -> str:
    """The command that shows the studies at `url` in a browser."""
    return f"optuna-dashboard {shlex.quote(url)}   # pip install '.[dashboard]'; then open http://127.0.0.1:8080"


def sampler(seed: int, concurrent: int, objectives: int = 1):
    """TPE, multivariate (the searched parameters interact: lambda with tau, d_state with the rest), with
    `constant_liar` when trials run at once so that concurrent trials do not all sample the same region."""
    import optuna

    with warnings.catch_warnings():  # multivariate and constant_liar are marked experimental; said once here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=concurrent > 1 and
                                          objectives == 1)


def directions(modes: list[str]) -> list[str]:
    return ["maximize" if mode == "max" else "minimize" for mode in modes]


def warm_start(storage, source: str, target: str, modes: list[str], distributions: dict[str, Any]) -> int:
    """Copy the finished trials of study `source` whose values fit the current space into study `target`
    (created here with the sweep's directions); returns how many were copied. Parameters the current space
    does not search are dropped; a trial with a value outside the current bounds is skipped."""
    import optuna
    from optuna.trial import TrialState

    try:
        old = optuna.load_study(study_name=source, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise StudyError(f"--warm-start {source}: no such study in the sweeps' Optuna storage "
                         f"(studies there: {', '.join(names) or 'none'})") from None
    if [d.name.lower()[:3] for d in old.directions] != [m for m in modes]:
        raise StudyError(f"--warm-start {source}: its objectives go "
                         f"{[d.name.lower() for d in old.directions]}, this sweep's {directions(modes)}")
    study = optuna.create_study(study_name=target, storage=storage, directions=directions(modes),
                                load_if_exists=True)
    copied = 0
    for trial in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = {k: v for k, v in trial.params.items() if k in distributions}
        if not params or not all(distributions[k]._contains(distributions[k].to_internal_repr(v))
                                  for k, v in params.items()):
            continue
        study.add_trial(optuna.trial.create_trial(
            state=trial.state, params=params, distributions={k: distributions[k] for k in params},
            values=trial.values if trial.state == TrialState.COMPLETE else None,
            intermediate_values=trial.intermediate_values,
            user_attrs={**trial.user_attrs, "warm_start_from": f"{source}#{trial.number}"}))
        copied += 1
    return copied
