"""The sweep's Optuna study on a real SQLite storage: where it lives, warm starts, pruned trials, trial names."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from orchestration import study
from orchestration.console import trial_label, trial_number


def test_the_study_sits_beside_an_sqlite_mlflow_else_beside_the_tune_state(tmp_path: Path) -> None:
    assert study.study_storage_url(f"sqlite:///{tmp_path}/m/mlflow.db", "/x/ray") == f"sqlite:///{tmp_path}/m/optuna.db"
    assert study.study_storage_url("http://10.0.0.1:5000", str(tmp_path / "ray")) == f"sqlite:///{tmp_path}/ray/optuna.db"
    assert study.study_storage_url("http://h:5000", "s3://bucket/sweeps").endswith("/tmp/tfmamba-sweeps/optuna.db")
    assert study.study_storage_url("sqlite:///a.db", "/x", "postgresql://u@h/optuna") == "postgresql://u@h/optuna"


def test_printed_commands_quote_paths_with_spaces_and_name_the_store(tmp_path: Path, monkeypatch) -> None:
    """A results folder with a space (macOS's "Application Support", a shared drive) printed `mlflow ui` and
    `optuna-dashboard` commands that a shell splits; `mlflow models serve` of a sweep's model in a store other than
    ./mlflow.db looked for it there."""
    from orchestration.mlflow_ui import ui_command
    from orchestration.results import serve_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here = f"sqlite:///{tmp_path}/mlflow.db"
    assert serve_command("models:/m@champion", here) == "mlflow models serve -m models:/m@champion --env-manager local"
    assert serve_command("models:/m@champion", "sqlite:////data/my results/mlflow.db") == (
        "MLFLOW_TRACKING_URI='sqlite:////data/my results/mlflow.db' mlflow models serve -m models:/m@champion "
        "--env-manager local")

    url = "sqlite:////data/my results/optuna.db"
    assert study.dashboard_command(url).startswith(f"optuna-dashboard '{url}'   # ")
    assert study.dashboard_command("sqlite:////data/optuna.db").startswith("optuna-dashboard sqlite:////data/optuna.db ")
    assert ui_command("sqlite:////data/my results/mlflow.db", "1").startswith(
        "mlflow ui --backend-store-uri 'sqlite:////data/my results/mlflow.db' --port 5000")


def test_a_storage_folder_that_cannot_be_made_is_a_study_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(study.StudyError, match=f"^Optuna storage sqlite:///{blocker}/optuna.db: cannot make its "
                                               f"folder {blocker} \\(File exists\\)$"):
        study.open_storage(f"sqlite:///{blocker}/optuna.db")


def finished_study(storage, name: str, values: list[float], params: list[dict]) -> None:
    old = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    distributions = {"cmdt_weight": optuna.distributions.FloatDistribution(0.0, 0.5),
                     "d_state": optuna.distributions.CategoricalDistribution([16, 32])}
    for value, point in zip(values, params):
        old.add_trial(optuna.trial.create_trial(params=point, distributions={k: distributions[k] for k in point},
                                                value=value))


def test_warm_start_copies_the_trials_that_fit_the_new_space(tmp_path: Path) -> None:
    storage = study.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    finished_study(storage, "old", [0.4, 0.5, 0.6],
                   [{"cmdt_weight": 0.1, "d_state": 16}, {"cmdt_weight": 0.45, "d_state": 32},
                    {"cmdt_weight": 0.2, "d_state": 16}])
    narrower = {"cmdt_weight": optuna.distributions.FloatDistribution(0.0, 0.3),  # 0.45 falls outside
                "d_state": optuna.distributions.CategoricalDistribution([16, 32]),
                "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}  # new: not in old trials
    assert not study.study_exists(storage, "new")
    assert study.warm_start(storage, "old", "new", ["max"], narrower) == 2
    assert study.study_exists(storage, "new")
    new = optuna.load_study(study_name="new", storage=storage)
    assert sorted(t.value for t in new.trials) == [0.4, 0.6]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["warm_start_from"].startswith("old#")
               for t in new.trials)
    with pytest.raises(study.StudyError, match="no such study.*studies there: new, old"):
        study.warm_start(storage, "missing", "other", ["max"], narrower)
    with pytest.raises(study.StudyError, match="objectives go"):
        study.warm_start(storage, "old", "other", ["min"], narrower)


def test_the_sampler_is_multivariate_tpe_with_constant_liar_when_trials_overlap() -> None:
    concurrent, alone = study.sampler(0, 4), study.sampler(0, 1)
    assert isinstance(concurrent, optuna.samplers.TPESampler)
    assert concurrent._multivariate and concurrent._constant_liar
    assert alone._multivariate and not alone._constant_liar


def test_a_trial_stopped_before_its_last_fold_is_pruned_in_optuna(tmp_path: Path) -> None:
    from ray import tune

    from orchestration.pruned_search import ProjectOptunaSearch

    url = f"sqlite:///{tmp_path}/optuna.db"
    searcher = ProjectOptunaSearch(sampler=study.sampler(0, 1), study_name="s", storage=study.open_storage(url),
                                   n_folds=3, time_attr="folds_done")
    searcher.set_search_properties("valid_ua_mean", "max", {"x": tune.uniform(0, 1)})
    for trial_id in ("a", "b", "c"):
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_result("a", {"valid_ua_mean": 0.3, "folds_done": 1, "training_iteration": 1})
    searcher.on_trial_complete("a", {"valid_ua_mean": 0.35, "folds_done": 2, "training_iteration": 2})
    searcher.on_trial_complete("b", {"valid_ua_mean": 0.5, "folds_done": 3, "training_iteration": 3})
    searcher.on_trial_complete("c", None, error=True)
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[0].intermediate_values == {1: 0.3, 2: 0.35} and trials[0].value == 0.35
    assert trials[1].value == 0.5


def test_trials_are_named_by_number_and_symbols() -> None:
    config = {"cmdt_weight": 0.2744, "cmdt_temperature": 0.3282, "filter_init": 0.1057, "d_state": 16, "lr": 3e-4}
    assert trial_label(7, config) == "t07 λ=0.27 τ=0.33 ω=0.11 d=16 lr=0.0003"
    assert trial_label(None, {"row": "tf_cmdt"}) == "row=tf_cmdt"
    name = "run_trial_101d6d00_12_cmdt_temperature=0.3282,cmdt_weight=0.2744,d_state=16_2026-11-26_14-29-05"
    assert trial_number(name) == 12
    assert trial_number("something-else") is None


def test_only_a_database_that_does_not_answer_is_waited_for() -> None:
    """Optuna wraps both a lost connection and bad data in StorageInternalError; only the first passes by waiting."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy import exc

    from orchestration.study import database_error, lost_connection

    def wrapped(cause: Exception) -> StorageInternalError:
        try:
            try:
                raise cause
            except Exception as err:
                raise StorageInternalError("An exception is raised during the commit.") from err
        except StorageInternalError as outer:
            return outer

    refused = exc.OperationalError("SELECT 1", {}, OSError("connection failed: Connection refused"))
    assert lost_connection(wrapped(refused)) and lost_connection(refused)
    assert database_error(wrapped(refused)) == "connection failed: Connection refused"
    assert not lost_connection(wrapped(exc.IntegrityError("INSERT", {}, ValueError("duplicate key"))))
    assert not lost_connection(ValueError("no such study"))


def test_the_study_storage_survives_pickling_and_waits(tmp_path) -> None:
    """Tune pickles the searcher with its storage into the sweep's state; `--resume` gets the same patient storage."""
    import pickle

    from orchestration.patient_storage import PatientRDBStorage
    from orchestration.study import open_storage

    storage = pickle.loads(pickle.dumps(open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")))
    assert isinstance(storage, PatientRDBStorage)
    assert storage.create_new_study.__wrapped__ is not None and storage.get_all_studies() == []
