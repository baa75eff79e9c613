"""End-to-end sweeps on a tiny demo corpus: real Ray (local), real Optuna, real MLflow (SQLite and a server).

Each test runs `python orchestration/sweep.py` as a user would: 2 trials x 2 folds x 1 epoch of
a tiny model, then reads the MLflow run tree back through `MlflowClient`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from servers import MlflowServer

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "orchestration" / "sweep.py"
TINY = ["epochs=1", "d_model=16", "headdim=8", "num_heads=2", "ffn_dim=32", "classifier_dims=[16]", "max_frames=80",
        "batch_size=16"]
BOUNDED = ("_wa", "_ua", "_wf1", "_wa_mean", "_ua_mean", "_wf1_mean", "_wa_std", "_ua_std", "_wf1_std",
           "_wa_best", "_ua_best", "_wf1_best")

pytestmark = pytest.mark.slow


def sweep_command(demo, storage: Path, name: str, *extra: str) -> list[str]:
    """A tiny sweep with --verbose: the tests read the workers' log lines (a user's console gets one line per
    fold instead; `test_pruning_study_names_registry_and_console` checks that one without --verbose)."""
    sets = [arg for item in TINY for arg in ("--set", item)]
    return [sys.executable, str(SWEEP), "--manifest", str(demo.manifest_dir), "--cache", str(demo.cache),
            "--folds", "1,2", "--num-samples", "2", "--storage-path", str(storage), "--name", name, "--verbose",
            *sets, *extra]


def run_sweep(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 480) -> str:
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def run_tree(uri: str, name: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tfmamba-sweeps")
    runs = client.search_runs([experiment.experiment_id], f"tags.sweep_id = '{name}'", max_results=1000)
    tree: dict[str, list] = {"sweep": [], "trial": [], "fold": []}
    for run in runs:
        tree[run.data.tags["run_kind"]].append(run)
    return tree


def check_tree(uri: str, name: str, storage: Path, epochs: int = 1) -> dict[str, list]:
    """1 sweep run, 2 trial runs under it, 2 fold runs under each; params and metrics as Tune saw them, and every
    fold's curve with one point per epoch. Each trial keeps Tune's JSON and CSV result logs and no TensorBoard
    event files (`launch.result_loggers`)."""
    from mlflow.tracking import MlflowClient

    tree = run_tree(uri, name)
    assert [len(tree[k]) for k in ("sweep", "trial", "fold")] == [1, 2, 4]
    sweep_id = tree["sweep"][0].info.run_id
    trial_runs = {run.data.tags["trial_id"]: run for run in tree["trial"]}
    assert all(run.data.tags["mlflow.parentRunId"] == sweep_id for run in tree["trial"])
    for run in tree["fold"]:
        assert run.data.tags["mlflow.parentRunId"] == trial_runs[run.data.tags["trial_id"]].info.run_id
    assert sorted((r.data.tags["trial_id"], r.data.tags["fold"]) for r in tree["fold"]) == sorted(
        (t, f) for t in trial_runs for f in ("1", "2"))
    assert all(run.info.status == "FINISHED" for kind in tree.values() for run in kind)
    tune_configs = {}
    for params in (storage / name).glob("*/params.json"):
        trial_id = params.parent.name.split("_")[2]
        tune_configs[trial_id] = json.loads(params.read_text())
        assert (params.parent / "result.json").is_file() and (params.parent / "progress.csv").is_file()
        assert not list(params.parent.glob("events.out.tfevents*")), sorted(p.name for p in params.parent.iterdir())
    assert set(tune_configs) == set(trial_runs)
    for trial_id, config in tune_configs.items():
        logged = trial_runs[trial_id].data.params
        assert set(logged) == set(config)
        for key, value in config.items():
            assert float(logged[key]) == pytest.approx(value, rel=1e-9)
    for run in tree["trial"] + tree["fold"]:
        metrics = run.data.metrics
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        bounded = {k: v for k, v in metrics.items() if k.endswith(BOUNDED)}
        assert bounded and all(0.0 <= v <= 1.0 for v in bounded.values()), metrics
    assert {"valid_ua_mean", "valid_ua_std", "test_ua_mean", "test_wf1_std"} <= set(tree["trial"][0].data.metrics)
    for run in tree["fold"]:
        for key in ("valid_ua", "train_loss"):
            steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_id, key, steps)
    return tree


def check_best_model(uri: str, tree: dict[str, list], demo) -> None:
    import mlflow
    import mlflow.pyfunc

    from mlflow.tracking import MlflowClient
    from tfmamba.features.store import FeatureStore
    from tfmamba.predict import Predictor

    sweep_run = tree["sweep"][0]
    model_uri = sweep_run.data.tags["best_model_uri"]
    best_trial = sweep_run.data.tags["best_trial_run_id"]
    fold_artifacts = [a.path for a in MlflowClient(uri).list_artifacts(tree["fold"][0].info.run_id)]
    assert {"confusion.png", "history.csv", "model"} <= set(fold_artifacts)
    mlflow.set_tracking_uri(uri)
    for where in (model_uri, f"runs:/{best_trial}/model"):
        model = mlflow.pyfunc.load_model(where)
        store = FeatureStore.open(str(demo.cache))
        items = [store.get(utt_id) for utt_id in store.utt_ids[:3]]
        predicted = model.predict(items)
        labels = set(model.metadata.metadata["label_map"].values())
        assert len(predicted) == 3 and set(predicted["label"]) <= labels
        assert model.metadata.metadata["feature_spec"]["extractor"] == "fbank"
    shown = MlflowClient(uri).get_logged_model(model_uri.removeprefix("models:/")).artifact_location  # the UI's path
    assert shown.startswith("mlflow-artifacts:/" if uri.startswith("http") else "file://"), shown
    labels_in_order = [model.metadata.metadata["label_map"][str(i)] for i in range(len(labels))]
    assert Predictor.load(shown, device="cpu", tracking_uri=uri).labels == labels_in_order


def test_sweep_sqlite_end_to_end(demo, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "e2e", "--mlflow-uri", uri), tmp_path,
                       env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"})  # a warm fold trains for ~1 s
    assert "Best trial" in output and "mlflow ui --backend-store-uri" in output
    tree = check_tree(uri, "e2e", tmp_path / "ray")
    for run in tree["fold"]:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    check_best_model(uri, tree, demo)
    assert (tmp_path / "mlartifacts").is_dir()


@pytest.fixture
def mlflow_server(tmp_path: Path, postgres):
    """A real `mlflow server` on a real PostgreSQL backend store, as the cluster configs run it (4 workers)."""
    server = MlflowServer(tmp_path, backend_uri=postgres.uri)
    server.start(workers=4)
    yield server.uri
    server.stop()


def test_sweep_against_mlflow_server_on_postgresql(demo, tmp_path: Path, mlflow_server: str) -> None:
    """4 folds at once (half a CPU each), 2 epochs, all logging to a PostgreSQL-backed server: every run and every
    epoch's metrics arrive, and nothing reports a lock."""
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "served", "--set", "epochs=2", "--cpus-per-worker", "0.5"),
                       tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert "4 fold slot" in output or "2 trial(s) at once, 2 fold(s) per trial at once" in output, output[-3000:]
    assert "is locked" not in output and "deadlock" not in output.lower()
    tree = check_tree(mlflow_server, "served", tmp_path / "ray", epochs=2)
    spans = [(run.info.start_time, run.info.end_time) for run in tree["fold"]]
    overlap = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    print(f"fold runs logging at once: {overlap}")
    assert overlap == 4
    check_best_model(mlflow_server, tree, demo)
    assert not (tmp_path / "mlflow.db").exists()


def compared_runs(output: str, experiment_id: str) -> list[str]:
    """The run ids of the printed MLflow page that sets runs side by side (after checking it is that page of the
    experiment, in the model-training view)."""
    from urllib.parse import parse_qs, urlsplit

    line = next(line for line in output.splitlines() if line.strip().startswith("side by side: "))
    url = urlsplit(line.split("side by side: ", 1)[1])
    page, _, query = url.fragment.partition("?")
    fields = parse_qs(query)
    assert page == "/compare-runs" and fields["workflowType"] == ["machine_learning"], line
    assert json.loads(fields["experiments"][0]) == [experiment_id], line
    return json.loads(fields["runs"][0])


def finished_trial(experiment: Path) -> str | None:
    """The id of a trial whose Tune results already hold all (2) folds."""
    for results in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if any(row.get("folds_done") == 2 for row in rows):
            return rows[-1]["trial_id"]
    return None


def interrupt_after_a_fold(command: list[str], cwd: Path, uri: str, storage: Path, name: str,
                           stop: signal.Signals = signal.SIGINT, whole_group: bool = False) -> str:
    """Run a sweep or grid command (Tune results under `storage`/`name`, MLflow at `uri`), press Ctrl-C (SIGINT to
    its driver; or send it `stop`, with `whole_group` to every process it started, as a job scheduler does) once a
    trial has logged its first fold to MLflow, and return its output; it must end with status 130, and with
    `whole_group` within 20 s, leaving no process behind. The MLflow store is read only once Tune's folder exists:
    the command has set the store up by then (opening it earlier could race its schema set-up)."""
    from mlflow.tracking import MlflowClient

    def a_fold_reported() -> bool:
        if not (storage / name).is_dir() or MlflowClient(uri).get_experiment_by_name("tfmamba-sweeps") is None:
            return False
        return any(run.data.metrics.get("folds_done", 0) >= 1 for run in run_tree(uri, name)["trial"])

    log = cwd / "command.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=whole_group)
        deadline = time.monotonic() + 420
        try:
            while not a_fold_reported():
                assert driver.poll() is None, f"it ended before it could be interrupted:\n{log.read_text()[-6000:]}"
                assert time.monotonic() < deadline, "the first fold did not finish in time"
                time.sleep(0.5)
            signalled = time.monotonic()
            if whole_group:
                os.killpg(driver.pid, stop)
            else:
                driver.send_signal(stop)
            driver.wait(timeout=120)
            seconds = time.monotonic() - signalled
        finally:
            if driver.poll() is None:
                driver.kill()
    output = log.read_text()
    assert driver.returncode == 130, output[-6000:]
    if whole_group:
        assert seconds < 20, f"it took {seconds:.0f} s to end:\n{output[-6000:]}"
        left = [p for p in psutil.process_iter(["name", "status"]) if _group_of(p) == driver.pid
                and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert not left, f"left running: {[p.info['name'] for p in left]}"
    return output


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def test_resume_after_the_driver_is_killed(demo, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "resumed", "--mlflow-uri", uri, "--max-concurrent", "1",
                            "--parallel-folds", "1")
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 420
    try:
        while (first_id := finished_trial(tmp_path / "ray" / "resumed")) is None or not [
                run for run in run_tree(uri, "resumed")["fold"] if run.data.tags["trial_id"] != first_id]:
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline, "the first trial did not finish in time"
            time.sleep(2)
        time.sleep(5)  # the second trial's first fold is under way
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finished = [r for r in run_tree(uri, "resumed")["trial"] if r.data.tags["trial_id"] == first_id]
    assert finished and finished[0].info.status == "FINISHED"
    first = finished[0]
    first_folds = {r.info.run_id: r.info.start_time for r in run_tree(uri, "resumed")["fold"]
                   if r.data.tags["trial_id"] == first.data.tags["trial_id"]}

    output = run_sweep(command + ["--resume"], tmp_path)
    assert "=== Sweep resumed resumed, finished after another" in output
    tree = check_tree(uri, "resumed", tmp_path / "ray")
    again = {r.info.run_id: r.info.start_time for r in tree["fold"]
             if r.data.tags["trial_id"] == first.data.tags["trial_id"]}
    assert again == first_folds
    assert f"trial {first.data.tags['trial_id']}: fold" not in output.split("resuming sweep")[-1]
    assert len(list((tmp_path / "ray").glob("resumed/*/params.json"))) == 2


def test_ctrl_c_interrupts_the_sweep_and_resume_finishes_it(demo, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the driver) while a trial's second fold trains: the sweep says it was interrupted and how
    to go on (exit 130), its trial waits as `interrupted`, not `pruned` (its process cannot tell Tune's stop at
    Ctrl-C from the scheduler's), and stays RUNNING in Optuna; `--resume` then finishes it as complete."""
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "ctrlc", "--mlflow-uri", uri, "--num-samples", "1",
                            "--parallel-folds", "1", "--set", "epochs=8")
    output = interrupt_after_a_fold(command, tmp_path, uri, tmp_path / "ray", "ctrlc")
    assert "=== Sweep ctrlc interrupted after" in output and "(0 complete, 1 interrupted)" in output
    assert "Continue it with the same command plus: --resume --name ctrlc" in output
    tree = run_tree(uri, "ctrlc")
    (trial,) = tree["trial"]
    assert (trial.info.status, trial.data.tags["outcome"]) == ("KILLED", "interrupted")
    assert not [run for run in tree["trial"] + tree["fold"] if "pruned" in run.data.tags]
    assert tree["sweep"][0].info.status == "KILLED"
    study = optuna.load_study(study_name="ctrlc", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["RUNNING"]

    other = subprocess.run(command + ["--resume", "--num-samples", "3", "--set", "epochs=9"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)  # Tune would restore 1 trial of 8 epochs
    assert other.returncode == 1 and "Started a private local Ray" not in other.stdout, other.stdout + other.stderr
    assert ("--set epochs=9 (started with --set epochs=8), --num-samples 3 (started with --num-samples 1): drop "
            "those options to resume it; for other settings, start a new sweep seeded with its complete trials: "
            "--warm-start ctrlc") in other.stderr, other.stderr[-3000:]
    output = run_sweep(command + ["--resume"], tmp_path)
    assert "=== Sweep ctrlc resumed, finished after another" in output and "(1 complete) x 2 folds" in output
    tree = run_tree(uri, "ctrlc")
    (trial,) = tree["trial"]
    assert (trial.info.status, trial.data.tags["outcome"]) == ("FINISHED", "complete")
    assert not [run for run in tree["trial"] + tree["fold"] if "pruned" in run.data.tags]
    metrics = tree["sweep"][0].data.metrics  # each part's own wall, and no overhead ratio over parts
    assert {"wall_seconds", "resumed_wall_seconds"} <= set(metrics) and "ray_overhead_ratio" not in metrics
    study = optuna.load_study(study_name="ctrlc", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_sigterm_to_every_process_of_the_job_ends_the_sweep_in_seconds(demo, tmp_path: Path) -> None:
    """A job scheduler's time limit (Slurm), systemd's stop or `timeout` sends SIGTERM to every process of the job,
    Ray's own with the driver: the GCS went first, Tune's clean-up waited a minute on it, and Ray's core then ended
    the driver with status 1, printing nothing of the sweep and leaving its MLflow runs RUNNING (by then a
    scheduler has killed it). It ends in seconds with status 130 and how to go on, its runs KILLED, nothing of its
    Ray left; and --resume finishes the sweep."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "stopped", "--mlflow-uri", uri, "--num-samples", "1",
                            "--parallel-folds", "1", "--set", "epochs=8")
    output = interrupt_after_a_fold(command, tmp_path, uri, tmp_path / "ray", "stopped", signal.SIGTERM,
                                    whole_group=True)
    assert ("=== stopped interrupted by SIGTERM, Ray's processes stopped with it. Continue it with the same command "
            "plus: --resume --name stopped") in output, output[-4000:]
    tree = run_tree(uri, "stopped")
    assert [run.info.status for run in tree["sweep"] + tree["trial"]] == ["KILLED", "KILLED"]
    assert "RUNNING" not in [run.info.status for run in tree["fold"]]
    output = run_sweep(command + ["--resume"], tmp_path)
    assert "=== Sweep stopped resumed, finished after another" in output and "(1 complete) x 2 folds" in output
    (trial,) = run_tree(uri, "stopped")["trial"]
    assert (trial.info.status, trial.data.tags["outcome"]) == ("FINISHED", "complete")


def test_failed_fold_fails_the_trial_with_its_error(demo, tmp_path: Path) -> None:
    """The fold's error, in its own words, on the summary's line of the trial and on both runs in MLflow; the
    console (without --verbose) shows no traceback. They used to show Ray's wrapping instead: the summary's line
    read `ray::ImplicitFunc.train() (pid=..., actor_id=...)` in terminal colours, the trial run's `error` tag held
    Ray's traceback, and Tune printed ~45 lines of it, then `Trials did not complete: [run_trial_f0449186]` and Optuna 3
    warnings about no complete trials."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "broken", "--mlflow-uri", uri, "--num-samples", "1",
                            "--folds", "1", "--set", "lr=1e30", "--set", "grad_clip=null")
    done = subprocess.run([arg for arg in command if arg != "--verbose"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    (row,) = [line for line in output.splitlines() if line.startswith("  t01 ") and line.endswith(")")]
    assert "failed  trial " in row and ", fold 1 failed: TrainingError: fold 1 (session-1), epoch " in row, row
    assert "the training loss is not finite" in row and "--fold-retries 1" in row, row
    assert "Traceback" not in output and "ray::" not in output and "\x1b[" not in output, output
    assert "no complete trials" not in output and "not contain completed trials" not in output, output
    assert "Trials did not complete" not in output and "run_trial_" not in output, output  # Tune's ids, not t01
    tree = run_tree(uri, "broken")
    assert [run.info.status for run in tree["trial"] + tree["fold"]] == ["FAILED", "FAILED"]
    for run in tree["trial"] + tree["fold"]:
        assert "the training loss is not finite" in run.data.tags["error"]
    assert tree["trial"][0].data.tags["error"].startswith("trial ")


def test_pruning_study_names_registry_and_console(demo, tmp_path: Path) -> None:
    """3 trials x 3 folds, one fold at a time: a trial ASHA stops starts no further fold and is PRUNED in the
    stored Optuna study and tagged `pruned` in MLflow; trial runs are named by number and values; the best model
    is registered only under --register's name, as @champion; the console stays short; a second sweep warm-starts
    from the first's study."""
    import optuna
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "steer", "--mlflow-uri", uri, "--folds", "1,2,3",
                            "--num-samples", "3", "--parallel-folds", "1", "--register", "test-ser")
    output = run_sweep([arg for arg in command if arg != "--verbose"], tmp_path, timeout=900)
    assert f"optuna-dashboard sqlite:///{tmp_path / 'optuna.db'}" in output
    assert "Failed to query Ray Train Controller" not in output and "Trial status:" not in output
    assert len(output.splitlines()) < 100, output
    assert "t01 λ=" in output and "fold 1/3" in output
    study = optuna.load_study(study_name="steer", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    tree = run_tree(uri, "steer")
    assert len(tree["trial"]) == len(study.trials) == 3
    for run in tree["trial"]:
        folds = [f for f in tree["fold"] if f.data.tags["trial_id"] == run.data.tags["trial_id"]]
        done = int(run.data.metrics["folds_done"])
        assert len(folds) == done  # a stopped trial started no further fold
        assert run.info.run_name.startswith("t0") and "λ=" in run.info.run_name
        assert (run.data.tags.get("pruned") == "true") == (done < 3)
        assert "valid_ua_mean" in run.data.metrics  # partial means kept
    assert study.metric_names == ["valid_ua_mean"]  # optuna-dashboard's axis label
    states = sorted(t.state.name for t in study.trials)
    assert states.count("PRUNED") == sum(r.data.tags.get("pruned") == "true" for r in tree["trial"])
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    client = MlflowClient(uri)
    assert [m.name for m in client.search_registered_models()] == ["test-ser"]
    champion = client.get_model_version_by_alias("test-ser", "champion")
    assert champion.tags["sweep"] == "steer" and champion.tags["corpus"] == "demo"
    sweep_run = tree["sweep"][0]
    assert client.get_experiment(sweep_run.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    assert f"#/experiments/{sweep_run.info.experiment_id}?workflowType=machine_learning" in output  # the runs view
    complete = {run.info.run_id: run.data.metrics["valid_ua_mean"] for run in tree["trial"]
                if run.data.tags.get("pruned") != "true"}
    compared = compared_runs(output, sweep_run.info.experiment_id)
    assert sorted(compared) == sorted(complete)  # the complete trials, best first (ties in either order)
    assert [complete[run] for run in compared] == sorted(complete.values(), reverse=True)
    assert sweep_run.data.tags["mlflow.source.git.commit"]
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png"} <= {
        a.path for a in client.list_artifacts(sweep_run.info.run_id, "optuna")}
    steps = [m.step for m in client.get_metric_history(sweep_run.info.run_id, "trials_finished")]
    assert sorted(steps) == [1, 2, 3]

    again = run_sweep(sweep_command(demo, tmp_path / "ray", "warm", "--mlflow-uri", uri, "--num-samples", "1",
                                    "--folds", "1", "--warm-start", "steer"), tmp_path)
    assert f"Warm start: {len(study.trials)} finished trial(s) of sweep steer" in again
    warm = optuna.load_study(study_name="warm", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(warm.trials) == len(study.trials) + 1
    assert [m.name for m in client.search_registered_models()] == ["test-ser"]  # no --register: nothing new

    # A new Tune folder, but the study name is taken in optuna.db: the sweep stops before its lanes and runs.
    taken = subprocess.run(sweep_command(demo, tmp_path / "elsewhere", "steer", "--mlflow-uri", uri), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert taken.returncode != 0
    assert "an Optuna study named 'steer' already exists" in taken.stderr, taken.stderr[-3000:]
    assert len(run_tree(uri, "steer")["sweep"]) == 1


def test_pareto_search_on_accuracy_and_size(demo, tmp_path: Path) -> None:
    """--objectives valid_ua_mean:max,params:min: both objectives in the stored study, the params counted per trial,
    the front tagged in MLflow and printed, the Pareto plot on the sweep run."""
    import optuna
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = run_sweep(sweep_command(demo, tmp_path / "ray", "front", "--mlflow-uri", uri, "--folds", "1",
                                     "--num-samples", "3", "--objectives", "valid_ua_mean:max,params:min"), tmp_path)
    assert "Pareto front (valid_ua_mean max, params min" in output
    study = optuna.load_study(study_name="front", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["valid_ua_mean", "params"]
    tree = run_tree(uri, "front")
    params = {run.data.tags["trial_id"]: run.data.metrics["params"] for run in tree["trial"]}
    assert len(params) == 3 and all(p > 1000 for p in params.values())
    assert sorted(t.values[1] for t in study.trials) == sorted(params.values())
    on_front = [run for run in tree["trial"] if run.data.tags.get("pareto") == "true"]
    assert on_front and len(study.best_trials) == len(on_front)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(tree["sweep"][0].info.run_id, "optuna")}
    assert artifacts == {"optuna/pareto_front.png"}
