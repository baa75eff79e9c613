"""What early stopping saves: the same demo sweep (same seed, same trials asked of TPE) with ASHA over finished
folds and without it, each run as a user runs it (`python orchestration/sweep.py ...`, its own local Ray and a
SQLite MLflow in a temporary folder). Read back from MLflow: fold runs started, fold-seconds (the fold runs'
MLflow durations, the stopped ones included), the trials pruned and the best validation metric found.

Writes benchmarks/results/pruning.json and .md (or under --out).

    python benchmarks/pruning.py                      # 6 trials x 3 folds x 1 epoch of a small model (~15 min on 2 cores)
    python benchmarks/pruning.py --trials 4 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, write_results  # noqa: E402

DEMO = ROOT / "data" / "demo"
SMALL = ["d_model=16", "headdim=8", "num_heads=2", "ffn_dim=32", "classifier_dims=[16]", "max_frames=80",
         "batch_size=16"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="trials per sweep (default: 6)")
    parser.add_argument("--folds", default="1,2,3", help="folds of the demo corpus (default: 1,2,3)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per fold (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed, the same for both sweeps (default: 0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    return parser.parse_args(argv)


def space_without_early_stopping(folder: Path) -> Path:
    """The demo space with `early_stopping: false`, everything else as shipped."""
    data = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text(encoding="utf-8"))
    data["early_stopping"] = False
    path = folder / "demo-no-early-stopping.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_sweep(work: Path, name: str, space: str, args: argparse.Namespace) -> dict:
    """One sweep in a fresh process; its fold runs read back from MLflow."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    sets = [a for item in SMALL + [f"epochs={args.epochs}"] for a in ("--set", item)]
    command = [sys.executable, str(ROOT / "orchestration" / "sweep.py"), "--space", space, "--folds", args.folds,
               "--num-samples", str(args.trials), "--seed", str(args.seed), "--storage-path", str(work / "ray"),
               "--name", name, "--mlflow-uri", uri, "--parallel-folds", "1", *sets]
    if (DEMO / "corpus").is_dir() and (DEMO / "fbank").is_dir():  # prepared once by `make demo`; else made here
        command += ["--manifest", str(DEMO / "corpus"), "--cache", str(DEMO / "fbank")]
    started, load_before = time.monotonic(), os.getloadavg()[0]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tfmamba-sweeps")
    runs = client.search_runs([experiment.experiment_id], f"tags.sweep_id = '{name}'", max_results=1000)
    folds = [r for r in runs if r.data.tags.get("run_kind") == "fold"]
    trials = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    sweep = next(r for r in runs if r.data.tags.get("run_kind") == "sweep")
    metric = sweep.data.tags.get("metric", "valid_ua_mean (max)").split()[0]
    complete = [t.data.metrics[metric] for t in trials if t.data.tags.get("outcome") == "complete"
                and metric in t.data.metrics]
    return {"name": name, "wall_seconds": round(wall, 1), "fold_runs_started": len(folds),
            "fold_runs_finished": sum(r.info.status == "FINISHED" for r in folds),
            "fold_runs_stopped": sum(r.info.status == "KILLED" for r in folds),
            "fold_runs_failed": sum(r.info.status == "FAILED" for r in folds),
            "epochs_trained": int(sum(r.data.metrics.get("epochs_run", 0) for r in folds)),
            "fold_seconds": round(sum(((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
                                      for r in folds), 1),
            "train_seconds": round(sum(r.data.metrics.get("train_seconds", 0.0) for r in folds), 1),
            "trials": len(trials), "trials_pruned": sum(t.data.tags.get("pruned") == "true" for t in trials),
            "metric": metric, "best": max(complete) if complete else None,
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_folds = len(args.folds.split(","))
    with tempfile.TemporaryDirectory(prefix="tfm-prune-") as tmp:
        work = Path(tmp)
        print(f"pruning benchmark: 2 demo sweeps of {args.trials} trials x {n_folds} folds x {args.epochs} "
              f"epoch(s), seed {args.seed}, in {work}", flush=True)
        with_es = run_sweep(work, "with-asha", "demo", args)
        print(f"  with ASHA: {json.dumps(with_es)}", flush=True)
        without = run_sweep(work, "without", str(space_without_early_stopping(work)), args)
        print(f"  without:   {json.dumps(without)}", flush=True)
    saved = 1 - with_es["fold_seconds"] / without["fold_seconds"] if without["fold_seconds"] else None
    rows = [(key, f"{with_es[key]} / {without[key]}") for key in
            ("fold_runs_started", "fold_runs_stopped", "fold_runs_failed", "epochs_trained", "fold_seconds",
             "train_seconds", "wall_seconds", "trials_pruned", "best", "load_average")]
    runs_saved = 1 - with_es["fold_runs_started"] / without["fold_runs_started"]
    rows.append(("fold runs saved by early stopping", f"{runs_saved:.0%}"))
    rows.append(("fold-seconds saved by early stopping", f"{saved:.0%}" if saved is not None else "n/a"))
    notes = (f"The demo sweep ({args.trials} trials x folds {args.folds} x {args.epochs} epoch(s) of a small model: "
             f"{', '.join(SMALL)}), TPE seed {args.seed}, one fold at a time per trial; values are "
             "`with ASHA (grace 2 folds, reduction 2) / without early stopping`. Fold-seconds depend on what "
             "else runs on the machine (the 1-minute load average before / after each sweep is in the table); "
             "fold runs started and epochs trained do not.")
    json_path, md_path = write_results("pruning", "Early stopping: fold runs and fold-seconds saved",
                                       {"settings": vars(args) | {"out": str(args.out), "small": SMALL},
                                        "with_early_stopping": with_es, "without_early_stopping": without,
                                        "fold_seconds_saved": saved, "fold_runs_saved": runs_saved},
                                       rows, notes, out=args.out)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
