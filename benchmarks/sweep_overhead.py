"""What Ray + Tune + MLflow cost around the training itself.

Runs a small demo sweep exactly as a user does (`python orchestration/sweep.py ...` in a fresh
process, its own local Ray, a SQLite MLflow store in a temporary folder), then reads the sweep
back from MLflow and compares:

- the sweep's wall time vs the sum of its folds' training time divided by the fold slots
  (the ratio `ray_overhead_ratio`: 1.0 would mean Ray, Tune and MLflow cost nothing);
- per fold: the fold run's MLflow duration minus the training loop's own `train_seconds`, for
  a lane's first fold (which waits for the lane's Train run to start with the sweep: worker
  processes, imports), a trial's first fold on a lane an earlier trial warmed, and the folds
  after those (data loading, model set-up, logging);
- the machine's CPU use (sampled from /proc/stat on Linux) over the sweep's phases: its start-up (the process's
  start to the first fold run), while a fold run is open on every fold slot, while fewer are (between folds, a last
  fold training alone), and its end (the last fold run's close to the process's exit): where cores sit idle;
- the `fit()` of an empty training loop (one worker reporting one checkpoint) by the trainer class a
  sweep's one-worker lane runs on its private Ray (`orchestration.lane_trainer`), timed on its own:
  the start-up every lane (one per fold slot of the sweep) pays once.

Writes benchmarks/results/sweep_overhead.json and .md (or under --out). Each Ray it starts (the sweep's, and the one
timing the empty trainer) keeps its files under the run's temporary folder ($RAY_TMPDIR) and runs without token
authentication, so it never meets another Ray on the machine.

    python benchmarks/sweep_overhead.py                 # the demo sweep: 4 trials x 3 folds x 2 epochs
    python benchmarks/sweep_overhead.py --quick         # 1 trial x 1 fold x 1 epoch (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, machine_info  # noqa: E402
from _cpu_busy import CpuSampler  # noqa: E402
from _timing import markdown_table  # noqa: E402

EXPERIMENT = "sweep-overhead"


def private_ray_env(work: Path) -> dict[str, str]:
    """The environment of a Ray this benchmark starts: its own temp folder (short: Ray's socket paths are limited
    to ~107 characters) and no token authentication."""
    return {"RAY_TMPDIR": str(work / "r"), "RAY_AUTH_MODE": "disabled"}


def empty_loop(config: dict) -> None:
    """A Train loop that does nothing but report one checkpoint (so `fit().metrics` is set)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "done").write_text("1")
        ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def drop_placement_group(group) -> None:
    """The lane's `keeper` here: the sweep's dispatcher would keep the group (one call to a running actor)."""


def trainer_startup_seconds(repeats: int, storage: Path) -> list[float]:
    """Wall time of an empty lane's `fit()` (`lane_trainer(1, local=True, keeper)`, as a sweep's one-worker lane on
    its private Ray) with one CPU worker, `repeats` times in one Ray session."""
    import ray
    import ray.train

    from orchestration.lane_trainer import lane_trainer
    from orchestration.launch import TRAIN_POLL_ENV
    from orchestration.ray_cluster import start_private_ray

    os.environ.update(private_ray_env(storage))
    start_private_ray(os.cpu_count(), {}, {"env_vars": dict(TRAIN_POLL_ENV)})  # never another Ray; the sweep's poll
    try:
        times = []
        for i in range(repeats):
            trainer = lane_trainer(1, local=True, keeper=drop_placement_group)(
                empty_loop, scaling_config=ray.train.ScalingConfig(num_workers=1),
                run_config=ray.train.RunConfig(name=f"empty-{i}", storage_path=str(storage)))
            start = time.perf_counter()
            result = trainer.fit()
            times.append(time.perf_counter() - start)
            if result.metrics is None or result.metrics.get("done") != 1:
                raise RuntimeError(f"empty lane run {i} returned no metrics: {result}")
        return times
    finally:
        ray.shutdown()


def run_sweep(work: Path, manifest: Path, cache: Path, trials: int, folds: str, epochs: int,
              max_frames: int) -> tuple[float, str]:
    """`python orchestration/sweep.py` with these sizes; returns its wall time and the MLflow URI."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cmd = [sys.executable, str(ROOT / "orchestration" / "sweep.py"), "--manifest", str(manifest), "--cache", str(cache),
           "--num-samples", str(trials), "--folds", folds, "--set", f"epochs={epochs}",
           "--set", f"max_frames={max_frames}", "--storage-path", str(work / "ray_results"), "--mlflow-uri", uri,
           "--experiment", EXPERIMENT, "--name", "overhead"]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=os.environ | private_ray_env(work))
    wall = time.perf_counter() - start
    (work / "sweep.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {proc.returncode}); its output:\n{proc.stdout[-4000:]}")
    return wall, uri


def read_sweep(uri: str) -> dict:
    """The sweep run's own timing metrics and each fold run's duration and training time."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    sweep = next(r for r in runs if r.data.tags.get("run_kind") == "sweep")
    folds = []
    for run in runs:
        if run.data.tags.get("run_kind") != "fold" or run.info.end_time is None:
            continue
        duration = (run.info.end_time - run.info.start_time) / 1e3
        train = float(run.data.metrics.get("train_seconds", 0.0))
        folds.append({"trial_id": run.data.tags.get("trial_id"), "fold": int(run.data.tags.get("fold", 0)),
                      "lane": run.data.tags.get("lane", ""), "lane_position": int(run.data.tags.get("lane_position", 1)),
                      "start_seconds": (run.info.start_time - sweep.info.start_time) / 1e3,
                      "start_epoch": run.info.start_time / 1e3, "end_epoch": run.info.end_time / 1e3,
                      "run_seconds": duration, "train_seconds": train, "overhead_seconds": duration - train})
    first_on_lane = {}
    for fold in sorted(folds, key=lambda f: f["start_seconds"]):
        first_on_lane.setdefault(fold["lane"], fold)
    for fold in folds:
        fold["kind"] = ("lane_first" if first_on_lane[fold["lane"]] is fold else
                        "trial_first" if fold["lane_position"] == 1 else "later")
    return {"sweep_metrics": dict(sweep.data.metrics), "folds": sorted(folds, key=lambda f: f["start_seconds"])}


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def slot_spans(folds: list[dict], slots: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """From the first fold run's opening to the last one's close: the spans with a fold run open on every fold slot,
    and those with fewer (between a lane's folds, or one lane done while another trains)."""
    edges = sorted({f["start_epoch"] for f in folds} | {f["end_epoch"] for f in folds})
    every, fewer = [], []
    for start, end in zip(edges, edges[1:]):
        middle = (start + end) / 2
        open_runs = sum(f["start_epoch"] <= middle < f["end_epoch"] for f in folds)
        (every if open_runs >= slots else fewer).append((start, end))
    return every, fewer


def cpu_phases(cpu: CpuSampler, process: tuple[float, float], folds: list[dict], slots: int) -> dict:
    """The machine's CPU use over the sweep process's phases (None each where /proc/stat could not be read)."""
    first, last = min(f["start_epoch"] for f in folds), max(f["end_epoch"] for f in folds)
    every, fewer = slot_spans(folds, slots)
    return {"start_up": cpu.busy([(process[0], first)]), "every_slot_in_a_fold": cpu.busy(every),
            "fewer_folds_than_slots": cpu.busy(fewer), "end": cpu.busy([(last, process[1])]),
            "whole_process": cpu.busy([process])}


def busy_cell(phase: dict | None) -> str:
    if phase is None:
        return "n/a"
    return (f"{phase['seconds']:.1f} s, {phase['busy_share']:.0%} busy, "
            f"{phase['idle_core_seconds']:.1f} core-seconds idle")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials of the demo sweep (default: 4, as `make demo`)")
    parser.add_argument("--folds", default="1,2,3",
                        help="demo folds to cross-validate (default: 1,2,3, as `make demo`)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fold (default: 2, as `make demo`)")
    parser.add_argument("--max-frames", type=int, default=200, help="frames per utterance (default: 200)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="empty lane runs to time (default: 3)")
    parser.add_argument("--demo-root", type=Path, default=ROOT / "data" / "demo",
                        help="where the demo corpus is (prepared there once; default: ./data/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="1 trial x 1 fold x 1 epoch on a tiny demo corpus, one empty run (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.folds, args.epochs, args.max_frames, args.startup_repeats = 1, "1", 1, 100, 1

    from tfmamba.demo import ensure_demo_data

    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        work = Path(tmp)
        # --quick makes a 12-clips-per-speaker demo corpus of its own (seconds) instead of the full one.
        demo = (ensure_demo_data(work / "demo", clips_per_speaker=12, progress=False) if args.quick
                else ensure_demo_data(args.demo_root, progress=False))
        startup = trainer_startup_seconds(args.startup_repeats, work / "empty")
        load_before = os.getloadavg()
        with CpuSampler() as cpu:
            process_start = time.time()
            wall, uri = run_sweep(work, demo.manifest_dir, demo.cache, args.trials, args.folds, args.epochs,
                                  args.max_frames)
            process_end = time.time()
        sweep = read_sweep(uri)
    metrics, folds = sweep["sweep_metrics"], sweep["folds"]
    if not folds:
        raise RuntimeError("the sweep finished but MLflow holds no finished fold run")
    slots = int(metrics["fold_slots"])
    fold_train = metrics["fold_train_seconds_sum"]
    overheads = [f["overhead_seconds"] for f in folds]
    first = [f["overhead_seconds"] for f in folds if f["kind"] == "lane_first"]
    trial_first = [f["overhead_seconds"] for f in folds if f["kind"] == "trial_first"]
    warm = [f["overhead_seconds"] for f in folds if f["kind"] == "later"]
    results = {
        "sizes": {"trials": args.trials, "folds": args.folds, "epochs": args.epochs, "max_frames": args.max_frames,
                  "fold_slots": slots, "quick": args.quick},
        "trainer_startup_seconds": startup,
        "trainer_startup_median_seconds": statistics.median(startup),
        "process_wall_seconds": wall,
        "sweep_wall_seconds": metrics["wall_seconds"],
        "fold_train_seconds_sum": fold_train,
        "ray_overhead_ratio": metrics.get("ray_overhead_ratio"),
        "process_overhead_ratio": wall / (fold_train / slots) if fold_train else None,
        "fold_runs": len(folds),
        "fold_overhead_median_seconds": statistics.median(overheads),
        "fold_overhead_first_on_lane_median_seconds": statistics.median(first) if first else None,
        "fold_overhead_trial_first_median_seconds": statistics.median(trial_first) if trial_first else None,
        "fold_overhead_warm_median_seconds": statistics.median(warm) if warm else None,
        "fold_train_median_seconds": statistics.median(f["train_seconds"] for f in folds),
        "first_fold_start_seconds": folds[0]["start_seconds"],
        "cpu_busy": cpu_phases(cpu, (process_start, process_end), folds, slots),
        "folds": folds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_before_sweep": load_before,
        "load_average": os.getloadavg(),
        "machine": machine_info(),
        "benchmark": "sweep_overhead",
    }
    name = "sweep_overhead" + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    ratio = results["ray_overhead_ratio"]
    lines = ["# Sweep overhead (Ray + Tune + MLflow)", "",
             f"{results['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, 1-minute load average "
             f"{load_before[0]:.1f} before the sweep, {results['load_average'][0]:.1f} at the end; demo corpus (fbank), "
             f"{args.trials} trial(s) x folds {args.folds} x {args.epochs} epoch(s), {slots} fold slot(s). The CPU rows "
             f"count all {m['cores']} cores and every process on the machine (/proc/stat).", ""]
    lines += markdown_table(["quantity", "value"], [
        ["sweep wall (in the script, from its data being ready)", f"{results['sweep_wall_seconds']:.1f} s"],
        ["sweep process wall (incl. Python and Ray start)", f"{wall:.1f} s"],
        ["sum of fold training time", f"{fold_train:.1f} s over {len(folds)} fold runs"],
        ["sum / fold slots", f"{fold_train / slots:.1f} s"],
        ["**overhead ratio** (sweep wall / (sum / slots))", f"**{ratio:.2f}**" if ratio else "n/a"],
        ["overhead ratio with process start", f"{results['process_overhead_ratio']:.2f}"],
        ["first fold run opened (after the sweep's MLflow run)", f"{results['first_fold_start_seconds']:.1f} s"],
        ["per fold: MLflow run duration - training (median)", f"{results['fold_overhead_median_seconds']:.1f} s"],
        [f"... a lane's first fold (median of {len(first)})", seconds(results["fold_overhead_first_on_lane_median_seconds"])],
        [f"... a trial's first fold on a lane an earlier trial warmed (median of {len(trial_first)})",
         seconds(results["fold_overhead_trial_first_median_seconds"])],
        [f"... a trial's later folds (median of {len(warm)})", seconds(results["fold_overhead_warm_median_seconds"])],
        ["per fold: training (median)", f"{results['fold_train_median_seconds']:.1f} s"],
        ["CPU: the sweep process's start to its first fold run", busy_cell(results["cpu_busy"]["start_up"])],
        [f"CPU: a fold run open on every fold slot ({slots})", busy_cell(results["cpu_busy"]["every_slot_in_a_fold"])],
        ["CPU: fewer fold runs open than slots (between folds, a last fold alone)",
         busy_cell(results["cpu_busy"]["fewer_folds_than_slots"])],
        ["CPU: the last fold run's close to the process's exit", busy_cell(results["cpu_busy"]["end"])],
        ["CPU: the whole sweep process", busy_cell(results["cpu_busy"]["whole_process"])],
        ["an empty lane's `fit()` (one-worker `lane_trainer`, median of runs)",
         f"{results['trainer_startup_median_seconds']:.1f} s ({', '.join(f'{s:.1f}' for s in startup)})"],
    ])
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {json_path} and {args.out / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
