"""The TF-Mamba sweep: Ray Tune + Optuna over the library's training settings, k-fold CV on Ray Train, MLflow.

Modules, one job each:
    sweep.py         the command (`python orchestration/sweep.py --help`)
    search_space.py  search-space YAML files -> validated `SearchSpace` -> Tune `param_space`
    data.py          the manifest, its folds and feature cache (or the demo corpus)
    resources.py     how many trials and folds run at once
    trial.py         the Tune trainable: one `TorchTrainer` per fold, running mean/std reports
    fold_worker.py   what a Train worker runs: `tfmamba.train.train_fold` with a Ray `Reporter`
    mlflow_runs.py   the sweep -> trial -> fold run tree, found again by tags (no duplicates)
    model_export.py  the best model as an MLflow pyfunc model
    results.py       after the search: close runs, pick the best trial, print the summary
"""
