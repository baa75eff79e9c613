"""Reproduce the paper's Table III: every ablation row as a full cross-validation, a Ray Tune grid,
tracked in MLflow, then a table and a plot beside the paper's numbers.

    python orchestration/ablation.py --demo                          # demo corpus, local Ray, ./mlflow.db
    python orchestration/ablation.py --manifest data/iemocap --cache data/iemocap/wavlm-large \\
        --gpus-per-worker 1 --storage-path s3://bucket/ablations --address auto

The rows come from search_spaces/table3.yaml (variant and CMDT weight per row, the rest from the
base training config: `paper`, or `demo` with --demo). Each row is one Tune trial running the
sweep's trial machinery: a TorchTrainer per fold, folds in parallel. MLflow gets one parent run
(`table3`), one child per row and the fold runs under each. The report (test WA/UA, or WF1 on
MELD, mean ± std over folds) goes to reports/table3-<corpus>.md, .csv and .png;
`python orchestration/report.py` rebuilds it from MLflow alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: import the installed `orchestration` package, not sibling files

import argparse
import json
import logging
import os
import time

from orchestration import mlflow_runs
from orchestration.data import SweepData, resolve_data
from orchestration.grid import Grid, load_grid
from orchestration.report import DEFAULT_EXPERIMENT, DEFAULT_OUT, TABLE_TAG, build_report
from orchestration.resources import plan
from orchestration.results import close_runs, collect_trials
from orchestration.search_space import SearchSpaceError
from orchestration.sweep import (
    add_output_options,
    add_resource_options,
    git_commit,
    parse_folds,
    parse_overrides,
    start_ray,
    storage_root,
)
from orchestration.trial import METRIC, MODE, SweepContext, run_trial

logger = logging.getLogger("orchestration.ablation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""Give --manifest and --cache (a prepared corpus and its feature cache), or --demo.
MELD has one official split: its rows are one run each (repeating it over seeds is not supported yet).
MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db.""")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", help="prepared manifest folder (manifest.parquet + folds.json)")
    data.add_argument("--cache", help="feature cache of that manifest (folder or s3://...)")
    data.add_argument("--demo", action="store_true",
                      help="the demo training config; without --manifest/--cache also the demo corpus "
                           "(./data/demo)")
    data.add_argument("--folds", default=None,
                      help="folds to cross-validate: 'all' or a list like 1,2,3 (default: all; 1,2,3 for the "
                           "demo corpus)")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--grid", default="table3",
                      help="grid file: a name in search_spaces/ or a YAML path (default: table3)")
    grid.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="fix a training setting for every row, e.g. --set epochs=10 (repeatable)")
    resources = add_resource_options(parser, unit="row")
    resources.add_argument("--max-concurrent", type=int, default=None, help="rows at once (default: what fits)")
    where = add_output_options(parser, run="run", name_default="<table>-<corpus>-<date>-<time>",
                               experiment=DEFAULT_EXPERIMENT)
    where.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the table and plot (default: ./{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.demo and args.manifest is None:
        parser.error("give --manifest and --cache, or --demo")
    if args.workers_per_fold < 1:
        parser.error("--workers-per-fold must be at least 1")
    return args


def row_parameters(grid: Grid, data: SweepData) -> dict[str, int]:
    """Trainable parameters of each row's network for this corpus's classes and feature dimension."""
    from tfmamba.corpora.manifest import read_manifest_metadata
    from tfmamba.model import TFMamba, count_parameters

    num_classes = len(json.loads(read_manifest_metadata(data.manifest_dir)["labels"]))
    input_dim = int(data.cache_metadata["dim"])
    return {name: count_parameters(TFMamba(grid.space.trial_config(row).model_config(num_classes, input_dim)))
            for name, row in grid.rows.items()}


def open_parent_run(grid: Grid, name: str, data: SweepData, uri: str, experiment_id: str, args) -> str:
    """The grid's MLflow parent run (named after the table) with what shaped it."""
    run_id = mlflow_runs.get_or_create_run(uri, experiment_id, mlflow_runs.sweep_tags(name), grid.table)
    tags = {TABLE_TAG: grid.table, "corpus": data.corpus, "rows": ",".join(grid.rows), "git_commit": git_commit(),
            "manifest": data.manifest_dir, "cache": data.cache, "grid": str(grid.path)}
    mlflow_runs.set_tags(uri, run_id, tags | {f"cache.{k}": v for k, v in data.cache_metadata.items()})
    mlflow_runs.log_params(uri, run_id, {"folds": ",".join(map(str, data.folds)), "base_config": grid.space.base,
                                         "workers_per_fold": args.workers_per_fold,
                                         "gpus_per_worker": args.gpus_per_worker,
                                         **{f"fixed.{k}": v for k, v in grid.space.fixed.items()}})
    client = mlflow_runs.client(uri)
    client.log_artifact(run_id, str(grid.path), artifact_path="grid")
    client.log_text(run_id, grid.space.base_config().to_yaml(), "grid/base_config.yaml")
    return run_id


def run_grid(grid: Grid, ctx: SweepContext, storage: str, name: str, max_concurrent: int,
             trial_resources: dict[str, float]):
    """Fit the Tune grid (one trial per row, no searcher, no early stopping)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources)
    tuner = tune.Tuner(trainable, param_space=grid.param_space(),
                       tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1,
                                                   max_concurrent_trials=max_concurrent),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1))
    return tuner.fit()


def label_rows(grid: Grid, trials, params: dict[str, int], uri: str) -> None:
    """Name each trial's run after its row and log the row's parameter count."""
    for trial in trials:
        if trial.run_id is None:
            continue
        variant = mlflow_runs.client(uri).get_run(trial.run_id).data.params.get("variant")
        if variant is None:
            continue
        row = grid.row_of(variant)
        mlflow_runs.set_tags(uri, trial.run_id, {"row": row, "mlflow.runName": row})
        mlflow_runs.log_metrics(uri, trial.run_id, {"n_params": params[row]})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    started = time.monotonic()
    try:
        grid = load_grid(args.grid, args.demo, parse_overrides(args.overrides))
    except SearchSpaceError as err:
        raise SystemExit(f"grid: {err}") from None
    data = resolve_data(args.manifest, args.cache, parse_folds(args.folds, demo=args.manifest is None))
    params = row_parameters(grid, data)
    storage = storage_root(args.storage_path)
    name = args.name or f"{grid.table}-{data.corpus}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "://" not in storage and Path(storage, name).exists():
        raise SystemExit(f"{storage}/{name} already exists: pick another --name")
    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    experiment_id = mlflow_runs.ensure_experiment(uri, args.experiment,
                                                  mlflow_runs.default_artifact_location(uri, args.experiment))
    parent_run_id = open_parent_run(grid, name, data, uri, experiment_id, args)
    start_ray(args.address, uri)
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, len(grid.rows),
                  len(data.folds), args.max_concurrent, args.parallel_folds)
    out_root = f"{storage}/{name}-outputs" if "://" not in storage else f"/tmp/tfmamba-ablations/{name}-outputs"
    ctx = SweepContext(sweep_id=name, space=grid.space, manifest_dir=data.manifest_dir, cache=data.cache,
                       folds=data.folds, out_root=out_root, train_storage=f"{storage}/{name}-train", tracking_uri=uri,
                       experiment_id=experiment_id, parent_run_id=parent_run_id,
                       workers_per_fold=args.workers_per_fold, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, parallel_folds=layout.parallel_folds)
    print(f"\n{grid.table} {name}: {len(grid.rows)} rows x {len(data.folds)} folds of {data.corpus}, "
          f"{layout.max_concurrent} row(s) at once, {layout.parallel_folds} fold(s) per row at once\n"
          f"  MLflow: {uri} (experiment {args.experiment!r}, parent run {parent_run_id})\n", flush=True)
    results = run_grid(grid, ctx, storage, name, layout.max_concurrent, layout.trial_resources)
    trials = collect_trials(results, ctx)
    close_runs(trials, ctx)
    label_rows(grid, trials, params, uri)
    failed = [t for t in trials if t.status != "complete"]
    wall = time.monotonic() - started
    mlflow_runs.log_metrics(uri, parent_run_id, {"wall_seconds": wall})
    mlflow_runs.end_run(uri, parent_run_id, "FAILED" if failed else "FINISHED")
    paths = build_report(uri, mlflow_runs.client(uri).get_run(parent_run_id), args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    for trial in failed:
        print(f"row {trial.config.get('variant', trial.trial_id)}: {trial.status} {trial.error or ''}")
    print(f"{grid.table} finished in {wall:.0f} s\n" + "\n".join(f"{ext}: {path}" for ext, path in paths.items())
          + f"\nMLflow parent run: {parent_run_id} (experiment {args.experiment!r}, {uri})\n"
          f"Rebuild the report: python orchestration/report.py --experiment {args.experiment} --run-id {parent_run_id}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
