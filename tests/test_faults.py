"""Sweep faults on a local Ray with real MLflow: a killed Train worker, a tracking server that goes away,
results that cannot be written; and the best model of such a sweep predicting held-out clips.

The end-to-end tests run `python orchestration/sweep.py` (1 trial x 1 or 2 folds x 5 epochs of a tiny
model on a 24-clips-per-speaker demo corpus), break something while a fold trains, and read the outcome
back from the sweep's output, its files and MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from servers import MlflowServer, free_port

from orchestration import mlflow_runs
from orchestration.fold_worker import FoldTask, RayReporter
from orchestration.preflight import PreflightError, check_local, check_outputs, check_remote, check_tracking_store
from tfmamba.corpora.folds import Fold

from test_sweep import run_tree

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "orchestration" / "sweep.py"
EPOCHS = 5
# The cheapest setting measured to beat chance on every demo fold (test UA 0.47-0.59 over folds 1-5 at 4
# epochs, 24 clips per speaker); 1 epoch at lr 1e-3 with warmup stays at 0.25, a constant prediction.
SETTINGS = [f"epochs={EPOCHS}", "warmup_epochs=0", "lr=0.02", "d_model=16", "headdim=8", "num_heads=2", "ffn_dim=32",
            "classifier_dims=[16]", "max_frames=80", "batch_size=16"]
CHANCE_MARGIN = 0.35  # 4 classes: chance UA is 0.25, and a model that predicts one class gets exactly that


@pytest.fixture
def server(tmp_path: Path):
    running = MlflowServer(tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from tfmamba.demo import ensure_demo_data

    return ensure_demo_data(tmp_path_factory.mktemp("demo"), clips_per_speaker=24, progress=False)


def sweep_command(demo, storage: Path, name: str, *extra: str) -> list[str]:
    sets = [arg for item in SETTINGS for arg in ("--set", item)]
    return [sys.executable, str(SWEEP), "--manifest", str(demo.manifest_dir), "--cache", str(demo.cache),
            "--folds", "1", "--num-samples", "1", "--storage-path", str(storage), "--name", name,
            "--min-free-gb", "0.1", "--verbose", *sets, *extra]  # the tests read worker log lines


def check_one_run_each(uri: str, name: str, folds: int = 1) -> dict[str, list]:
    """One sweep and trial run and `folds` fold runs, all FINISHED, and one curve point per epoch."""
    from mlflow.tracking import MlflowClient

    tree = run_tree(uri, name)
    assert [len(tree[k]) for k in ("sweep", "trial", "fold")] == [1, 1, folds]
    assert [run.info.status for kind in tree.values() for run in kind] == ["FINISHED"] * (2 + folds)
    for fold in tree["fold"]:
        curve = MlflowClient(uri).get_metric_history(fold.info.run_id, "valid_ua")
        assert sorted(m.step for m in curve) == list(range(1, EPOCHS + 1))
    return tree


def wait_for(condition, driver: subprocess.Popen, what: str, timeout: float = 300, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert driver.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return found


def checkpointed_epoch(storage: Path, name: str, fold: int = 1) -> int:
    """The newest epoch of `fold` whose checkpoint the Train controller has registered (what `get_checkpoint()`
    gives a restarted worker), 0 if none. A checkpoint folder alone is not enough: the controller may not have
    collected the report yet."""
    epochs = []
    for path in (storage / f"{name}-train").glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(path.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        if latest and latest["metrics"].get("fold") == fold:
            epochs.append(int(latest["metrics"]["epoch"]))
    return max(epochs, default=0)


def saved_epoch(storage: Path, name: str, fold: int = 1) -> int:
    """The newest epoch `fold` wrote to its own output folder (reported right after), 0 if none."""
    epochs = []
    for path in (storage / f"{name}-outputs").glob(f"*/fold{fold}/checkpoints/last/progress.json"):
        try:
            epochs.append(json.loads(path.read_text())["epoch"])
        except (OSError, ValueError):  # being replaced
            pass
    return max(epochs, default=0)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: Ray's workers are children of the raylet the driver started)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def train_worker_pids(driver_pid: int) -> list[int]:
    pids = []
    for pid in descendants(driver_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "RayTrainWorker" in command:
            pids.append(pid)
    return pids


def finish(driver: subprocess.Popen, log: Path, timeout: float = 480) -> str:
    """Wait for the sweep, keep its output in `log`, and return it (it must have succeeded)."""
    try:
        output, _ = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        output, _ = driver.communicate()
        log.write_text(output, encoding="utf-8")
        raise AssertionError("the sweep did not finish:\n" + output[-6000:]) from None
    log.write_text(output, encoding="utf-8")
    assert driver.returncode == 0, output[-6000:]
    return output


# ---- 1. a Train worker killed mid-fold ---------------------------------------------------------------


KILLED_FOLD = 2  # the trial's second fold, on the workers that trained its first (one lane)


@pytest.fixture(scope="module")
def killed_worker_sweep(demo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-fold sweep on one lane whose Train worker is SIGKILLed after fold 2's epoch-1 checkpoint; the default
    --fold-retries restarts it."""
    folder = tmp_path_factory.mktemp("killed")
    uri, storage = f"sqlite:///{folder / 'mlflow.db'}", folder / "ray"
    started = time.monotonic()
    command = sweep_command(demo, storage, "killed", "--mlflow-uri", uri, "--folds", f"1,{KILLED_FOLD}",
                            "--parallel-folds", "1")
    driver = subprocess.Popen(command, cwd=folder, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: checkpointed_epoch(storage, "killed", KILLED_FOLD) >= 1, driver, "fold 2's epoch-1 checkpoint")
        workers = wait_for(lambda: train_worker_pids(driver.pid), driver, "the Train worker's pid", timeout=10)
        killed_at = saved_epoch(storage, "killed", KILLED_FOLD)
        registered = checkpointed_epoch(storage, "killed", KILLED_FOLD)
        os.kill(workers[0], signal.SIGKILL)
        output = finish(driver, folder / "sweep.log")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return {"uri": uri, "storage": storage, "output": output, "killed_pid": workers[0], "killed_at": killed_at,
            "registered": registered, "seconds": time.monotonic() - started}


@pytest.mark.slow
def test_killed_worker_resumes_its_fold_from_the_last_checkpoint(killed_worker_sweep, demo, tmp_path) -> None:
    import torch

    from tfmamba.config import TrainConfig
    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.features.store import FeatureStore
    from tfmamba.corpora.folds import load_folds
    from tfmamba.training.fold import train_fold

    sweep, output = killed_worker_sweep, killed_worker_sweep["output"]
    assert sweep["killed_at"] < EPOCHS, "the worker was killed after its fold had finished"
    # Ray saw the worker die (its health check names the dead process; the torch backend's shutdown, gone from a
    # one-worker lane, also logged ActorDiedError) and restarted it
    assert "[FailurePolicy] RETRY" in output and "worker process has died" in output
    resumed = [int(line.rsplit("(epoch ", 1)[1].split(")")[0]) for line in output.splitlines()
               if f"resuming fold {KILLED_FOLD} from" in line]
    assert len(resumed) == 1 and sweep["registered"] <= resumed[0] < EPOCHS, output[-6000:]
    # get_checkpoint(), not only the local folder; and the lane's checkpoint of fold 2, not of fold 1
    assert f"fold {KILLED_FOLD}: resuming from Ray checkpoint" in output
    starts = [line for line in output.splitlines() if "fold 1 (session-1)" in line]
    assert len(starts) == 1 and "from scratch" in starts[0] and "resuming fold 1" not in output  # fold 1 trained once
    tree = check_one_run_each(sweep["uri"], "killed", folds=2)
    runs = {int(run.data.tags["fold"]): run for run in tree["fold"]}
    assert runs[1].data.tags["lane_position"] == "1" and runs[KILLED_FOLD].data.tags["lane_position"] == "2"
    out_dir = Path(runs[KILLED_FOLD].data.tags["out_dir"])
    interrupted = json.loads((out_dir / "metrics.json").read_text())
    assert interrupted["status"] == "ok" and interrupted["epochs_run"] == EPOCHS

    manifest = read_manifest(demo.manifest_dir)
    fold = next(f for f in load_folds(demo.manifest_dir, manifest) if f.index == KILLED_FOLD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU Ray worker
    try:
        whole = train_fold(TrainConfig.from_yaml(out_dir / "train_config.yaml"), fold,
                           FeatureStore.open(str(demo.cache)), manifest=manifest, out_dir=tmp_path / "whole",
                           progress=False).to_dict()
    finally:
        torch.set_num_threads(threads)
    assert interrupted["best_epoch"] == whole["best_epoch"]
    assert interrupted["test_confusion"] == whole["test_confusion"]
    for split in ("valid", "test"):
        assert interrupted[split] == pytest.approx(whole[split], rel=1e-5, abs=1e-6)
    for row, again in zip(interrupted["history"], whole["history"], strict=True):
        assert row == pytest.approx(again, rel=1e-5, abs=1e-6)
    print(f"killed worker at epoch {sweep['killed_at']}, resumed after epoch {resumed[0]}; "
          f"sweep {sweep['seconds']:.0f} s; test UA {interrupted['test']['ua']:.4f} vs {whole['test']['ua']:.4f} uninterrupted")


def logged_epochs(uri: str, name: str) -> int:
    """How many validation points the sweep's (one) fold run has in MLflow so far, 0 before it exists."""
    from mlflow.tracking import MlflowClient

    try:
        folds = run_tree(uri, name)["fold"]
    except Exception:  # the store or the experiment is not there yet
        return 0
    return len(MlflowClient(uri).get_metric_history(folds[0].info.run_id, "valid_ua")) if folds else 0


@pytest.mark.slow
def test_a_killed_worker_with_no_checkpoint_yet_trains_its_fold_again_and_logs_each_epoch_once(demo, tmp_path) -> None:
    """`checkpoint_seconds` longer than the fold: the worker is SIGKILLed after 2 logged epochs and before any
    checkpoint, so the retry trains the fold from scratch; the epochs the lost attempt logged are not logged
    again (one point per epoch), and the last epoch writes the fold's one checkpoint."""
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"
    command = sweep_command(demo, storage, "sparse", "--mlflow-uri", uri, "--set", "checkpoint_seconds=3600")
    driver = subprocess.Popen(command, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: logged_epochs(uri, "sparse") >= 2, driver, "two logged epochs")
        workers = wait_for(lambda: train_worker_pids(driver.pid), driver, "the Train worker's pid", timeout=10)
        assert checkpointed_epoch(storage, "sparse") == 0 and saved_epoch(storage, "sparse") == 0
        os.kill(workers[0], signal.SIGKILL)
        killed_after = logged_epochs(uri, "sparse")
        output = finish(driver, tmp_path / "sweep.log")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed_after < EPOCHS, "the worker was killed after its fold had finished"
    assert "[FailurePolicy] RETRY" in output and "resuming fold 1" not in output
    starts = [line for line in output.splitlines() if "fold 1 (session-1)" in line and "utterances" in line]
    assert len(starts) == 2 and all("from scratch" in line for line in starts), output[-6000:]
    fold_run = check_one_run_each(uri, "sparse")["fold"][0]  # one valid_ua point per epoch
    assert len(fold_run.data.tags["attempt_nodes"].split(",")) == 2
    assert saved_epoch(storage, "sparse") == EPOCHS


# ---- 4. the best model of that sweep, loaded from MLflow, beats chance on its fold's held-out clips ----


@pytest.mark.slow
def test_best_model_predicts_held_out_clips_above_chance(killed_worker_sweep, demo) -> None:
    import mlflow
    import mlflow.pyfunc

    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.corpora.folds import load_folds
    from tfmamba.metrics import compute_metrics

    tree = run_tree(killed_worker_sweep["uri"], "killed")
    mlflow.set_tracking_uri(killed_worker_sweep["uri"])
    model = mlflow.pyfunc.load_model(tree["sweep"][0].data.tags["best_model_uri"])
    source = mlflow.get_run(model.metadata.metadata["source_fold_run"]).data.tags["fold"]
    manifest = read_manifest(demo.manifest_dir)
    fold = next(f for f in load_folds(demo.manifest_dir, manifest) if f.index == int(source))
    clips = manifest.table.set_index("utt_id").loc[fold.test]
    predicted = model.predict(clips["path"].tolist())
    assert list(predicted["error"]) == [""] * len(clips)
    labels = manifest.labels
    truth = [labels.index(label) for label in clips["label"]]
    ua = compute_metrics(truth, [labels.index(label) for label in predicted["label"]], labels).ua
    constant = compute_metrics(truth, [truth[0]] * len(truth), labels).ua
    print(f"best model: UA {ua:.3f} on fold {source}'s {len(truth)} held-out clips (one class always: {constant:.3f})")
    assert constant == pytest.approx(0.25)
    assert ua > CHANCE_MARGIN


# ---- 2. the MLflow server unreachable for a while ---------------------------------------------------


def test_retries_give_up_within_their_budget_on_a_down_server(monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    for key, value in mlflow_runs.http_env().items():
        monkeypatch.setenv(key, value)
    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(MlflowException):
        mlflow_runs.set_tags(down, "0" * 32, {"a": 1}, retry_seconds=0)
    once = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(MlflowException):
        mlflow_runs.set_tags(down, "0" * 32, {"a": 1}, retry_seconds=4)
    retried = time.monotonic() - started
    assert once < 3 and 3 <= retried < 10, (once, retried)  # attempts after 1 s and 1 + 2 s, then the budget ends


def test_errors_about_the_request_are_not_retried(tmp_path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_runs.ensure_experiment(uri, "x")
    started = time.monotonic()
    with pytest.raises(MlflowException):
        mlflow_runs.end_run(uri, "0" * 32, retry_seconds=30)
    assert time.monotonic() - started < 5
    assert mlflow_runs.is_transient(ConnectionRefusedError()) and mlflow_runs.is_transient(MlflowException("down"))
    assert not mlflow_runs.is_transient(FileNotFoundError("artifact"))
    assert not mlflow_runs.is_transient(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))


@pytest.mark.slow
@pytest.mark.parametrize("what", ["the server", "its database"])
def test_reporter_buffers_epochs_while_the_server_is_down(what: str, tmp_path: Path, request, monkeypatch) -> None:
    """Epochs wait in the worker's buffer while the tracking server is down, or while the PostgreSQL behind it (a
    cluster's `cluster/mlflow-server.sh`) restarts or fails over, when the server answers 503 at once; a new
    sweep's preflight then says that the server's store is failing, not that the server cannot be reached."""
    from mlflow.tracking import MlflowClient

    for key, value in mlflow_runs.http_env().items():
        monkeypatch.setenv(key, value)
    if what == "the server":
        server = request.getfixturevalue("server")
        go_down, come_back = server.stop, server.start
    else:
        database = request.getfixturevalue("own_postgres")
        server = MlflowServer(tmp_path, backend_uri=database.uri)
        request.addfinalizer(server.stop)
        go_down, come_back = database.shut_down, database.restart
    server.start()
    experiment = mlflow_runs.ensure_experiment(server.uri, "buffer")
    run_id = mlflow_runs.get_or_create_run(server.uri, experiment, {"run_kind": "fold"}, "fold1")
    reporter = RayReporter(FoldTask(config={}, split=Fold(1, "one", [], [], []), manifest=None, cache="", out_dir="",
                                    tracking_uri=server.uri, run_id=run_id), rank=0)
    reporter._log({"epoch": 1, "valid_ua": 0.1})
    go_down()
    started = time.monotonic()
    reporter._log({"epoch": 2, "valid_ua": 0.2})
    reporter._log({"epoch": 3, "valid_ua": 0.3})
    assert time.monotonic() - started < 10  # one quick attempt per epoch: training is not held up
    assert [step for step, _, _ in reporter.pending] == [2, 3]
    if what == "its database":
        assert "answers, but with HTTP 503 errors: its own store" in check_tracking_store(server.uri)
    come_back()
    reporter._log({"epoch": 4, "valid_ua": 0.4})
    assert reporter.pending == []
    client = MlflowClient(server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "valid_ua")] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert client.get_run(run_id).data.tags[RayReporter.GAP_TAG] == "2,3"

    go_down()  # down at the end of the fold: the final report waits (bounded) until the server is back
    reporter._log({"epoch": 5, "valid_ua": 0.5})
    back = threading.Timer(2.0, come_back)
    back.start()
    reporter._log({"epoch": 5, "done": 1.0, "test_ua": 0.45})
    back.join()
    assert reporter.pending == []
    assert [m.step for m in client.get_metric_history(run_id, "valid_ua")] == [1, 2, 3, 4, 5]
    assert client.get_metric_history(run_id, "test_ua")[0].value == 0.45
    assert client.get_run(run_id).data.tags[RayReporter.GAP_TAG] == "2,3,5"


@pytest.mark.slow
def test_sweep_survives_the_mlflow_server_going_away(demo, tmp_path: Path, server: MlflowServer) -> None:
    server.start()
    storage = tmp_path / "ray"
    started = time.monotonic()
    driver = subprocess.Popen(sweep_command(demo, storage, "gap"), cwd=tmp_path, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": server.uri}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: checkpointed_epoch(storage, "gap") >= 1, driver, "the epoch-1 checkpoint")
        server.stop()
        stopped_at = saved_epoch(storage, "gap")
        wait_for(lambda: saved_epoch(storage, "gap") >= stopped_at + 2, driver, "two epochs without MLflow")
        down_for = time.monotonic()
        server.start()
        down_for = time.monotonic() - down_for
        output = finish(driver, tmp_path / "sweep.log")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert "MLflow unreachable" in output and "were logged late" in output
    assert "MLflow was unreachable for " in output and "were buffered and logged late" in output
    tree = check_one_run_each(server.uri, "gap")
    gap = tree["fold"][0].data.tags[RayReporter.GAP_TAG]
    assert str(stopped_at + 1) in gap.split(",")
    assert tree["fold"][0].data.metrics["test_ua"] >= 0
    print(f"server stopped after epoch {stopped_at}, restarted {down_for:.0f} s later; gap epochs {gap}; "
          f"sweep {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_sweep_waits_for_its_study_database_to_come_back(demo, tmp_path: Path, own_postgres) -> None:
    """The Optuna study on PostgreSQL, which shuts down once fold 1 is reported and is back 15 s later: Tune calls the
    searcher in its loop, so the lost connection used to end the sweep in a StorageInternalError traceback (or, for
    the trial's last result, to leave it RUNNING in the study: `OptunaSearch` only logs a failed `tell`). The storage
    now waits for the database (`Optuna storage X failed (attempt N: <the driver's words>)`), its pool replaces the
    dead connections, and the sweep finishes with the trial COMPLETE in the study."""
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = sweep_command(demo, tmp_path / "ray", "studydown", "--mlflow-uri", uri, "--folds", "1,2,3",
                            "--parallel-folds", "1", "--study-storage", own_postgres.uri)
    driver = subprocess.Popen(command, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("fold 1/3" in line for line in lines), driver, "fold 1's report")
        own_postgres.shut_down()
        time.sleep(15)
        own_postgres.restart()
        driver.wait(timeout=480)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    reader.join(timeout=10)
    output = "".join(lines)
    (tmp_path / "sweep.log").write_text(output, encoding="utf-8")
    assert driver.returncode == 0, output[-6000:]
    waits = [line for line in output.splitlines() if "Optuna storage set_trial_" in line and "failed (attempt" in line]
    assert waits and "Connection refused" in waits[-1], output[-6000:]
    assert "invalid data in the commit" not in output and "StorageInternalError" not in output
    check_one_run_each(uri, "studydown", folds=3)
    (trial,) = optuna.load_study(study_name="studydown", storage=own_postgres.uri).trials
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2]


# ---- 3. results that cannot be written -----------------------------------------------------------------


def test_preflight_names_each_bad_location(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert check_local(tmp_path / "new" / "deeper", 0) is None
    assert not list(tmp_path.glob(".tfmamba-preflight-*"))
    assert "is a file, not a folder" in check_local(blocker / "ray", 0)
    assert "GiB free" in check_local(tmp_path, 10**18)
    assert check_remote(f"file://{tmp_path}") is None
    assert check_remote(f"file://{blocker}/ray") is not None
    with pytest.raises(PreflightError) as caught:
        check_outputs({"storage": str(blocker / "ray"), "outputs": str(tmp_path / "ok"),
                       "artifacts": f"file://{blocker}/art"}, min_free_gb=0)
    message = str(caught.value)
    assert "storage" in message and "artifacts" in message and "outputs" not in message
    assert "--min-free-gb" in message


@pytest.mark.parametrize("case", ["storage under a file", "free space below the floor", "sqlite store under a file",
                                  "study storage under a file"])
def test_sweep_refuses_to_start_when_results_cannot_be_written(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    options = {"storage under a file": ["--storage-path", str(blocker / "ray")],
               "free space below the floor": ["--min-free-gb", "1e9"],
               "sqlite store under a file": ["--mlflow-uri", f"sqlite:///{blocker}/mlflow.db"],
               "study storage under a file": ["--study-storage", f"sqlite:///{blocker}/optuna.db"]}[case]
    command = [sys.executable, str(SWEEP), "--manifest", str(tmp_path / "no-manifest"), "--cache",
               str(tmp_path / "no-cache"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *options]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "cannot write the results, nothing was started" in done.stderr, done.stderr[-3000:]
    assert ("is a file, not a folder" if "under a file" in case else "GiB free") in done.stderr
    assert "Ray" not in done.stdout + done.stderr  # Ray was never started
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


FILLING_EPOCHS = 20  # ~10 s of training left when the disk fills: the guard (every 2 s) stops the sweep first


@pytest.mark.slow
def test_a_disk_filling_up_stops_the_sweep_resumably(demo, tmp_path: Path, small_disks) -> None:
    """Once the fold has a checkpoint, its Tune storage's disk is filled to 25 MiB free, under half of
    --min-free-gb 0.1: the sweep stops as Ctrl-C stops it, saying why, and once the space is freed --resume
    finishes the fold from its checkpoint. Before the guard, the sweep ran on into the full disk: the fold failed,
    the sweep ended in a traceback, and Tune's saved state, rewritten in place, was cut short, so --resume could not
    read it."""
    from mlflow.tracking import MlflowClient

    small_disk = small_disks.mount(160)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", small_disk / "ray"
    command = sweep_command(demo, storage, "filling", "--mlflow-uri", uri, "--set", f"epochs={FILLING_EPOCHS}")
    driver = subprocess.Popen(command, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: checkpointed_epoch(storage, "filling") >= 1, driver, "the fold's epoch-1 checkpoint")
        filler = small_disks.fill(small_disk, leave=25 * 2**20)
        filled_at = saved_epoch(storage, "filling")
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    (tmp_path / "stopped.log").write_text(output, encoding="utf-8")
    assert driver.returncode == 1, output[-6000:]
    stopped = next((line for line in output.splitlines() if line.startswith("Stopped to keep it resumable")), "")
    assert stopped.startswith(f"Stopped to keep it resumable: the Tune/Train storage {storage} had only 0.0"), output
    assert stopped.endswith("GiB left on its disk, under 0.05 GiB (half of --min-free-gb 0.1). Free some space there "
                            "before you resume it.")
    assert "=== Sweep filling interrupted after" in output and "No space left" not in output
    (trial,) = run_tree(uri, "filling")["trial"]
    assert (trial.info.status, trial.data.tags["outcome"]) == ("KILLED", "interrupted")

    filler.unlink()
    resumed = subprocess.Popen(command + ["--resume"], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output = finish(resumed, tmp_path / "resumed.log")
    assert "=== Sweep filling resumed, finished after another" in output
    starts = [int(line.rsplit("(epoch ", 1)[1].split(")")[0]) for line in output.splitlines()
              if "resuming fold 1 from" in line]
    # the stopped trial's fold trains on until Tune ends the trial, so it may have reached its last epoch
    assert len(starts) == 1 and 1 <= starts[0] <= FILLING_EPOCHS, output[-6000:]
    tree = run_tree(uri, "filling")
    assert [run.info.status for kind in ("sweep", "trial", "fold") for run in tree[kind]] == ["FINISHED"] * 3
    curve = MlflowClient(uri).get_metric_history(tree["fold"][0].info.run_id, "valid_ua")
    assert sorted(m.step for m in curve) == list(range(1, FILLING_EPOCHS + 1))
    print(f"disk filled after epoch {filled_at}; resumed from epoch {starts[0]}")


def test_resuming_a_saved_state_cut_short_says_so_before_ray_starts(demo, tmp_path: Path) -> None:
    """Tune's state as a full disk leaves it: Tune used to log "Failed to restore the run state", start the sweep
    afresh and fail with "no search space has been defined"."""
    storage = tmp_path / "ray"
    (storage / "cut").mkdir(parents=True)
    (storage / "cut" / "tuner.pkl").write_bytes(b"saved when the sweep started")  # before the disk filled
    (storage / "cut" / "experiment_state-2026-11-29_00-56-49.json").write_text('{"trial_data": [["{\\"status')
    command = sweep_command(demo, storage, "cut", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (f"--resume: the saved state of sweep cut is cut short ({storage}/cut/experiment_state-2026-11-29_00-56-49"
            ".json: JSONDecodeError: ") in done.stderr, done.stderr[-3000:]
    assert "start a new sweep seeded with its complete trials: --warm-start cut --name NEW_NAME" in done.stderr
    assert "Ray" not in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "weird://tracking"])
def test_sweep_refuses_to_start_when_the_tracking_store_cannot_be_reached(tmp_path: Path, uri: str) -> None:
    """A tracking server that is down, or a URI MLflow has no store for: one message naming it, before Ray starts
    (the sweep used to start Ray, wait ~2 minutes on the down server and end in a traceback)."""
    uri = uri.format(port=free_port())
    command = [sys.executable, str(SWEEP), "--manifest", str(tmp_path / "no-manifest"), "--cache",
               str(tmp_path / "no-cache"), "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", uri]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert done.returncode != 0
    assert f"cannot write the results, nothing was started:\n  - MLflow tracking store {uri}: cannot reach it (" \
        in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout + done.stderr
