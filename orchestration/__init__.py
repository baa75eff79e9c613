"""The TF-Mamba sweep: Ray Tune + Optuna over the library's training settings, k-fold CV on Ray Train, MLflow.

Entry scripts (run as `python orchestration/X.py`; thin: parse, launch, run, finish):
    sweep.py         the hyper-parameter search (`python orchestration/sweep.py --help`)
    ablation.py      the paper's Tables III and II as Tune grids
    report.py        a table's report rebuilt from MLflow alone

Modules, one job each (no module imports an entry script):
    options.py       the command-line options the scripts share, checked once
    launch.py        results location + preflight, start/join Ray, the parent MLflow run, Tuner set-up
    warm_up.py       the driver's MLflow and Tune set-up, done while Ray starts
    ray_cluster.py   a private local Ray, or joining a cluster with a one-line reason when that fails
    stop_signal.py   SIGTERM as Ctrl-C; the driver's quick end when the signal stopped Ray's processes too
    preflight.py     can every results location be written, with room left
    node_check.py    on a joined cluster: can the nodes that run folds read the cache, storage and MLflow
    search_space.py  search-space YAML files -> validated `SearchSpace` -> Tune `param_space`
    grid.py          ablation grids (one Tune trial per row); rows.py: the rows' caches, sizes, labels
    sweep_data.py    the manifest, its folds and feature cache (or the demo corpus)
    resources.py     how many trials and folds run at once
    trial.py         the Tune trainable: a trial's folds on the sweep's lanes, running mean/std reports
    fold_lanes.py    the sweep's lanes (Train runs of warm workers) and the dispatcher lending them to trials
    lane_trainer.py  the Train trainer a lane runs, without what a lane never uses
    fold_worker.py   what a Train worker runs: `tfmamba.training.fold.train_fold` with a Ray `Reporter`
    mlflow_runs.py   the one door to MLflow (bounded retries): the sweep -> trial -> fold run tree
    model_export.py  the best model as an MLflow pyfunc model
    results.py       after the search: close runs, pick the best trial, print the summary
    study.py         the sweep's stored Optuna study (TPE sampler, --warm-start, optuna-dashboard)
    pruned_search.py OptunaSearch telling Optuna a trial stopped by ASHA is PRUNED
    pareto.py        --objectives: accuracy against cost (params, latency), the Pareto front
    registry.py      --register: the model registry version, alias `champion`, its tags
    mlflow_ui.py     what the MLflow UI shows: experiment view, run names, Optuna plots
    progress.py      Tune callbacks: one console line per trial event, best-so-far on the sweep run
    console.py       quiet Ray consoles (worker logs to files) unless --verbose
"""

import sys as _sys
from pathlib import Path as _Path

# `python orchestration/sweep.py` puts this folder first on sys.path, where its modules (data, trial, report,
# ...) would shadow top-level modules of the same names for every later import; the package is imported as
# `orchestration` from the installed project instead, so that entry is dropped here, once for every script.
if _sys.path and _Path(_sys.path[0] or ".").resolve() == _Path(__file__).resolve().parent:
    _sys.path.pop(0)
