"""The sweep command's argument handling and resource planning (no Ray cluster started)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration import mlflow_runs
from orchestration.resources import fold_slots
from orchestration.options import parse_folds
from orchestration.sweep import parse_args
from orchestration.trial import lane_run_name, summarize

SWEEP = Path(__file__).resolve().parent.parent / "orchestration" / "sweep.py"


def test_help_runs_as_a_plain_script_and_names_the_env_var() -> None:
    done = subprocess.run([sys.executable, str(SWEEP), "--help"], capture_output=True, text=True, timeout=120,
                          cwd="/")
    assert done.returncode == 0, done.stderr
    for option in ("--space", "--manifest", "--cache", "--num-samples", "--max-concurrent", "--folds",
                   "--workers-per-fold", "--gpus-per-worker", "--storage-path", "--mlflow-uri", "--experiment",
                   "--resume", "--address", "MLFLOW_TRACKING_URI"):
        assert option in done.stdout


def test_a_console_that_cannot_write_greek_letters_gets_question_marks() -> None:
    """An ASCII or latin-1 console (PYTHONIOENCODING, a non-UTF-8 locale, a Windows code page) used to end
    `sweep.py --help` in a UnicodeEncodeError on its `λ=0.27 τ=0.33 ω=0.11` example."""
    import os

    done = subprocess.run([sys.executable, str(SWEEP), "--help"], capture_output=True, timeout=120, cwd="/",
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"`t07 ?=0.27 ?=0.33 ?=0.11 d=16`" in done.stdout


def test_bad_space_is_reported_before_anything_starts(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("base: demo\nparams:\n  lr: {distribution: loguniform, low: 0.1, high: 0.01}\n")
    done = subprocess.run([sys.executable, str(SWEEP), "--space", str(space)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert "parameter 'lr': low (0.1) must be below high (0.01)" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_fold_bigger_than_the_private_ray_is_refused(tmp_path: Path, demo) -> None:
    """On a private local Ray (no --address), which never grows, a fold that needs more than the machine has used to
    be planned anyway ("planning for 1"), and the sweep waited for it for good."""
    import os

    done = subprocess.run([sys.executable, str(SWEEP), "--manifest", str(demo.manifest_dir), "--cache",
                           str(demo.cache), "--cpus-per-worker", str(2 * os.cpu_count()), "--num-samples", "1",
                           "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert (f"one fold needs 1 worker(s) x {2 * os.cpu_count()} CPU / 0 GPU, more than this machine's private Ray "
            "has (") in done.stderr and "GPU), which does not grow" in done.stderr, done.stderr[-3000:]
    assert "--address" in done.stderr and "started" not in done.stdout


def test_folds_option() -> None:
    assert parse_folds(None, demo=False) is None
    assert parse_folds(None, demo=True) == [1, 2, 3]
    assert parse_folds("all", demo=True) is None
    assert parse_folds("2,4", demo=False) == [2, 4]
    with pytest.raises(SystemExit, match="fold numbers"):
        parse_folds("one", demo=False)
    with pytest.raises(SystemExit, match="fold 1 listed twice"):  # the sweep used to wait for good for its second run
        parse_folds("1, 2,1", demo=False)
    for empty in ("", " ", ","):  # an unset shell variable: it ran every fold (the demo's 5, not its 3)
        with pytest.raises(SystemExit, match="names no fold"):
            parse_folds(empty, demo=True)


def test_argument_checks(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args([])
    assert (args.num_samples, args.workers_per_fold, args.gpus_per_worker, args.resume) == (4, 1, 0.0, False)
    assert (parse_args(["--fold-retries", "-1"]).fold_retries, parse_args(["--min-free-gb", "0"]).min_free_gb) == (-1, 0)
    for bad, message in [(["--num-samples", "0"], "--num-samples must be at least 1"),
                         (["--fold-retries", "-2"], "--fold-retries must be -1 (no limit), 0 or more"),
                         (["--min-free-gb", "-1"], "--min-free-gb must be 0 (no check) or more"),
                         (["--min-free-gb", "nan"], "--min-free-gb must be 0 (no check) or more"),
                         (["--experiment", " "], "--experiment must name an MLflow experiment (it is empty)"),
                         # 'a/b' made nested folders that --resume without --name never found, and 'my sweep' a
                         # printed `--resume --name my sweep` that a shell splits
                         *[(["--name", name], f"--name {name!r}: use letters, digits, '.', '_' or '-', beginning "
                                              "with a letter or digit") for name in ("a/b", "my sweep", "..", "")],
                         # an unset shell variable: these ran with ./mlflow.db, and without a warm start
                         (["--mlflow-uri", ""], "--mlflow-uri is empty (an unset shell variable?)"),
                         (["--warm-start", " "], "--warm-start is empty")]:
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert f"error: {message}" in capsys.readouterr().err
    assert parse_args(["--name", "demo-20261129-081336", "--resume"]).name == "demo-20261129-081336"


def test_the_plan_never_asks_a_private_ray_for_more_than_it_has(caplog: pytest.LogCaptureFixture) -> None:
    """A trial takes all its lanes at once: --parallel-folds 3 with 2 fold slots made both trials wait for good, and
    --max-fold-slots 10 on a private Ray (which does not grow) planned 10 lanes for 2 slots."""
    from orchestration.resources import plan

    machine = {"CPU": 2.0}
    layout = plan(1, 1.0, 0.0, num_samples=4, n_folds=3, parallel_folds=3, total=machine)
    assert (layout.max_concurrent, layout.parallel_folds, layout.parallel_slots) == (2, 2, 2)
    layout = plan(1, 1.0, 0.0, num_samples=4, n_folds=3, max_fold_slots=10, total=machine)
    assert (layout.max_concurrent, layout.parallel_slots) == (2, 2)
    assert "--parallel-folds 3: the cluster holds 2 fold(s) at once" in caplog.text
    assert "--max-fold-slots 10: this machine's private Ray does not grow" in caplog.text
    joined = plan(1, 1.0, 0.0, num_samples=4, n_folds=3, max_fold_slots=10, joined=True, total=machine)
    assert joined.parallel_slots == 8  # 4 trials x 2 folds: a joined cluster grows, the folds past 2 wait for nodes
    with pytest.raises(SystemExit, match="more than this machine's private Ray has"):
        plan(1, 1.0, 1.0, num_samples=4, n_folds=3, total=machine)


def test_fold_slots_count_whole_folds() -> None:
    assert fold_slots({"CPU": 2.0}, workers=1, cpus=1.0, gpus=0.0) == 2
    assert fold_slots({"CPU": 16.0, "GPU": 8.0}, workers=2, cpus=1.0, gpus=1.0) == 4
    assert fold_slots({"CPU": 16.0}, workers=1, cpus=1.0, gpus=1.0) == 0


def test_summary_is_mean_and_std_over_folds() -> None:
    results = {1: {"valid": {"ua": 0.5, "wa": 0.4, "wf1": 0.3}, "test": {"ua": 0.6}, "train_seconds": 2.0},
               2: {"valid": {"ua": 0.7, "wa": 0.6, "wf1": 0.5}, "test": {"ua": 0.8}, "train_seconds": 3.0}}
    summary = summarize(results)
    assert summary["valid_ua_mean"] == pytest.approx(0.6) and summary["valid_ua_std"] == pytest.approx(0.1)
    assert summary["test_ua_mean"] == pytest.approx(0.7) and summary["folds_done"] == 2
    assert summary["train_seconds_sum"] == 5.0
    assert lane_run_name("s", "lane3") == "s-lane3"


def test_a_trial_run_logs_its_objective_first_and_its_counters_last(tmp_path: Path) -> None:
    """MLflow lists a run's metrics in first-logged order, and its run comparison opens on the first shared one."""
    summary = summarize({1: {"valid": {"ua": 0.5, "wf1": 0.4}, "test": {"ua": 0.6}}}) | {"params": 1000.0}
    ordered = mlflow_runs.objective_first(summary, "valid_wf1_mean")
    assert ordered == summary and list(ordered)[0] == "valid_wf1_mean"
    assert list(ordered)[-3:] == list(mlflow_runs.BOOKKEEPING_METRICS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = mlflow_runs.client(uri).create_run(mlflow_runs.ensure_experiment(uri, "order")).info.run_id
    mlflow_runs.log_metrics(uri, run_id, ordered, step=1)
    mlflow_runs.log_metrics(uri, run_id, summary, step=2)
    assert list(mlflow_runs.get_run(uri, run_id).data.metrics) == list(ordered)


def test_fold_slots_at_the_cluster_largest_from_the_launcher_config(tmp_path: Path) -> None:
    """cluster/gpu.yaml: up to 8 GPU workers of 4 CPU + 1 GPU, a head with no CPU for folds."""
    from orchestration.resources import autoscaler_slots

    config = Path(__file__).resolve().parent.parent / "cluster" / "gpu.yaml"
    assert autoscaler_slots(1, 1.0, 1.0, config) == 8
    assert autoscaler_slots(2, 1.0, 1.0, config) == 4
    assert autoscaler_slots(1, 2.0, 0.0, config) == 16
    assert autoscaler_slots(1, 1.0, 1.0, tmp_path / "none.yaml") is None


def test_the_summary_lists_complete_trials_best_first_before_the_stopped_and_failed(capsys) -> None:
    """A trial ASHA stopped after 2 of 3 folds can have the highest mean over its folds; it must not head the list
    above the best trial (the demo sweep's t04, 0.551 over 2 folds, above t03, 0.533 over 3)."""
    from orchestration.results import SweepSummary, TrialSummary, print_summary
    from orchestration.trial import METRIC, SweepContext

    def trial(name: str, status: str, done: int, ua: float | None) -> TrialSummary:
        metrics = {"folds_done": done} | ({METRIC: ua, "valid_ua_std": 0.01} if ua is not None else {})
        return TrialSummary(name, None, status, {}, metrics, "boom" if status == "failed" else None, label=name)

    trials = [trial("t04", "stopped early", 2, 0.551), trial("t01", "complete", 3, 0.523),
              trial("t05", "failed", 0, None), trial("t03", "complete", 3, 0.533), trial("t02", "complete", 3, 0.527)]
    ctx = SweepContext("s", None, "m", "c", (1, 2, 3), "o", "t", "sqlite:///mlflow.db", "1", "p")
    print_summary(SweepSummary(trials, trials[3], "models:/m-1", "p", 96.0, 141.0, 2), ctx, "exp", "tune")
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Trials ("))
    listed = [line.split()[0] for line in lines[start + 1:start + 6]]
    assert listed == ["t03", "t02", "t01", "t04", "t05"], lines
    assert "2/3 folds  0.551 ± 0.010  stopped early" in lines[start + 4]
    assert "(3 complete, 1 stopped early, 1 failed)" in lines[1]


@pytest.mark.parametrize(("data", "message"), [
    (lambda demo, tmp: ["--manifest", str(tmp / "none"), "--cache", str(demo.cache)],
     r"^--manifest .*/none: .*/none/manifest.parquet: manifest not found \(run `tfmamba prepare"),
    (lambda demo, tmp: ["--manifest", str(demo.manifest_dir), "--cache", "weird://bucket/cache"],
     r"^--cache weird://bucket/cache: cannot open feature cache location 'weird://bucket/cache'"),
])
def test_a_missing_manifest_or_unreachable_cache_stops_with_one_line(demo, tmp_path: Path, data, message) -> None:
    """Bad data options end the sweep and the grids with a message naming the option and the path, before Ray
    starts (the manifest and a cache URI of an unknown scheme gave tracebacks)."""
    from orchestration import ablation, sweep

    for main in (sweep.main, ablation.main):
        with pytest.raises(SystemExit, match=message):
            main([*data(demo, tmp_path), "--storage-path", str(tmp_path / "ray"),
                  "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_cache_still_being_written_is_refused(demo, tmp_path: Path) -> None:
    """A sweep or grid started while `tfmamba features` still writes its cache would train on the utterances written
    so far, and each fold then failed on the rest: it stops before Ray starts, naming the writer."""
    from orchestration import ablation, sweep
    from tfmamba.features.writer import WRITER_LOCK
    from tfmamba.process_lock import acquire

    with acquire(str(demo.cache), WRITER_LOCK):  # this test is the `tfmamba features` still writing it
        for main in (sweep.main, ablation.main):
            with pytest.raises(SystemExit, match=rf"^--cache {demo.cache}: the feature cache is still being written "
                                                 rf"\(pid {os.getpid()} on .*\): wait for `tfmamba features` to end"):
                main(["--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--storage-path",
                      str(tmp_path / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_cache_whose_build_stopped_part_way_is_refused(demo, tmp_path: Path) -> None:
    """A `tfmamba features` run stopped part way (Ctrl-C, a lost session) leaves a cache of the utterances written so
    far: every fold of a sweep or grid on it failed on the rest, after its retries. It stops before Ray starts."""
    from orchestration import ablation, sweep
    from tfmamba.corpora.manifest import manifest_hash, read_manifest
    from tfmamba.features.build import build_cache
    from tfmamba.features.factory import get_extractor

    manifest = read_manifest(demo.manifest_dir)
    part = tmp_path / "part-cache"
    build_cache(manifest.table.head(30), manifest_hash(manifest), get_extractor("fbank"), str(part), progress=False)
    (part / "problems.csv").unlink()  # a build that ends writes it; one stopped part way has not
    for main in (sweep.main, ablation.main):
        with pytest.raises(SystemExit, match=rf"^--cache {part}: holds 30 of the manifest's {len(manifest.table)} "
                                             r"utterances and lists 0 as skipped: its build has not finished \(the "
                                             r"same `tfmamba features` command completes it\)$"):
            main(["--manifest", str(demo.manifest_dir), "--cache", str(part), "--storage-path",
                  str(tmp_path / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_of_a_name_with_nothing_saved_stops_before_anything_starts(demo, tmp_path: Path) -> None:
    """`--resume --name` with a typo started Ray, printed the sweep's banner and left a RUNNING MLflow run of that
    name before Tune said there was nothing to restore; now it stops first, naming what is saved there."""
    from orchestration import ablation, sweep

    storage = tmp_path / "ray"
    (storage / "demo-20261129-081336").mkdir(parents=True)
    (storage / "demo-20261129-081336" / "tuner.pkl").write_bytes(b"saved")
    for main, what in ((sweep.main, "sweep"), (ablation.main, "grid")):
        with pytest.raises(SystemExit, match=rf"^--resume: no {what} named 'demo-20261129-08133' under {storage} "
                                             rf"\({what}s saved there: demo-20261129-081336\); check --name and "
                                             r"--storage-path"):
            main(["--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--resume", "--name",
                  "demo-20261129-08133", "--storage-path", str(storage), "--mlflow-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert not (tmp_path / "mlflow.db").exists() and sorted(p.name for p in storage.iterdir()) == [
        "demo-20261129-081336"]


def test_resume_continues_only_a_run_of_its_own_kind(demo, tmp_path: Path) -> None:
    """`sweep.py --resume` without --name took the newest run under the storage, a Table II grid of the same
    folder, and ran its rows as a sweep's trials (on the wrong caches: a row failed) into the sweeps' experiment,
    registering a model. Each script now continues only its own kind (Tune's state tells them apart), and says
    which script continues the other."""
    from orchestration import ablation, sweep
    from orchestration.launch import newest_run

    storage = tmp_path / "ray"
    for name, state in (("demo-20261129-101500", "search_gen_state-2026-11-29_10-15-00.json"),
                        ("table2-demo-20261129-111653", "basic-variant-state-2026-11-29_11-16-57.json")):
        (storage / name).mkdir(parents=True)
        (storage / name / "tuner.pkl").write_bytes(b"saved")
        (storage / name / state).write_text("{}")
        time.sleep(0.05)  # the grid is the newer
    assert (newest_run(str(storage), "sweep"), newest_run(str(storage), "grid")) == (
        "demo-20261129-101500", "table2-demo-20261129-111653")
    options = ["--manifest", str(demo.manifest_dir), "--cache", str(demo.cache), "--storage-path", str(storage),
               "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume", "--name"]
    with pytest.raises(SystemExit, match=rf"^--resume: 'table2-demo-20261129-111653' under {storage} is a grid, not a "
                                         r"sweep: continue it with `python orchestration/ablation.py --resume --name "
                                         r"table2-demo-20261129-111653` and the options it started with"):
        sweep.main([*options, "table2-demo-20261129-111653"])
    with pytest.raises(SystemExit, match=r"is a sweep, not a grid: continue it with `python orchestration/sweep.py"):
        ablation.main([*options, "demo-20261129-101500"])
    shutil.rmtree(storage / "demo-20261129-101500")
    with pytest.raises(SystemExit, match=rf"^--resume: no sweep to resume under {storage}$"):
        sweep.main(options[:-1])
    assert not (tmp_path / "mlflow.db").exists()


HOLD_LOCK = ("import sys, time\nfrom orchestration.launch import hold_driver_lock\n"
             "hold_driver_lock(sys.argv[1], sys.argv[2], 'sweep')\nprint('held', flush=True)\n"
             "time.sleep(float(sys.argv[3]))\n")


def test_a_second_driver_of_a_running_sweep_is_refused(tmp_path: Path) -> None:
    """`--resume` of a sweep whose driver still runs (here a process holding its lock as the driver does) stops
    before Ray starts, naming that process; once it is gone the lock is free again, with nothing to clean up."""
    storage = tmp_path / "ray"
    driver = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(storage), "busy", "120"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert driver.stdout.readline().strip() == "held"
        done = subprocess.run([sys.executable, str(SWEEP), "--resume", "--name", "busy", "--storage-path",
                               str(storage), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 1, done.stderr[-3000:]
        assert f"sweep busy is being run by another process (pid {driver.pid} on " in done.stderr
        assert "Started a private local Ray" not in done.stdout
    finally:
        driver.kill()
        driver.wait()
    again = subprocess.run([sys.executable, "-c", HOLD_LOCK, str(storage), "busy", "0"], capture_output=True,
                           text=True, timeout=60)
    assert again.stdout.strip() == "held", again.stderr
