"""Reproduce the paper's Tables III and II: every row as a full cross-validation, a Ray Tune grid,
tracked in MLflow, then a table and a plot beside the paper's numbers.

    python orchestration/ablation.py --demo                          # Table III, demo corpus, local Ray
    python orchestration/ablation.py --manifest data/iemocap --cache data/iemocap/wavlm-large \\
        --gpus-per-worker 1 --storage-path s3://bucket/ablations --address auto
    python orchestration/ablation.py --table 2 --manifest data/iemocap --caches-root caches/iemocap
    python orchestration/ablation.py --manifest data/meld --cache caches/meld/wavlm-large --seeds 5

The rows come from search_spaces/table3.yaml (variant and CMDT weight per row) or table2.yaml
(one feature cache per pre-trained model), the rest from the base training config: `paper`, or
`demo` with --demo. Each row is one Tune trial running the sweep's trial machinery: a
TorchTrainer per fold (and per seed with --seeds), folds in parallel. MLflow gets one parent run
(`table3`/`table2`), one child per row and the fold runs under each. The report (test WA/UA, or
WF1 on MELD, mean ± std over folds and seeds) goes to reports/<table>-<corpus>.md, .csv and .png;
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
from dataclasses import replace

from orchestration import mlflow_runs
from orchestration.data import SweepData, cache_exists, check_cache, ensure_demo_caches, resolve_data
from orchestration.grid import Grid, load_grid
from orchestration.report import DEFAULT_EXPERIMENT, DEFAULT_OUT, TABLE_TAG, build_report
from orchestration.resources import plan
from orchestration.results import close_runs, collect_trials
from orchestration.search_space import SearchSpaceError
from orchestration.sweep import (
    add_output_options,
    add_resource_options,
    check_retries,
    git_commit,
    output_root,
    parse_folds,
    parse_overrides,
    preflight,
    restore_tuner,
    start_ray,
    storage_root,
    sweep_name,
)
from orchestration.trial import METRIC, MODE, ROW_KEY, SweepContext, run_trial

logger = logging.getLogger("orchestration.ablation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""Give --manifest and --cache (a prepared corpus and its feature cache), or --demo.
Table II rows name their own caches: --manifest with --caches-root (and --row-cache ROW=PATH), see
search_spaces/table2.yaml. MELD has one official split: repeat it over seeds with --seeds 5.
Resume an interrupted grid: the same command plus --resume (and its --name; else the newest grid
under --storage-path); finished rows are not rerun and write no new MLflow runs.
MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db.""")
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", help="prepared manifest folder (manifest.parquet + folds.json)")
    data.add_argument("--cache", help="feature cache of that manifest (folder or s3://...), for rows naming none")
    data.add_argument("--caches-root", default=None,
                      help="folder (or s3://...) holding the caches rows name (Table II); default: the folder "
                           "holding --cache, else the manifest folder")
    data.add_argument("--row-cache", dest="row_caches", action="append", default=[], metavar="ROW=CACHE",
                      help="this row's cache instead of the one its grid names (repeatable)")
    data.add_argument("--demo", action="store_true",
                      help="the demo training config; without --manifest/--cache also the demo corpus "
                           "(./data/demo)")
    data.add_argument("--folds", default=None,
                      help="folds to cross-validate: 'all' or a list like 1,2,3 (default: all; 1,2,3 for the "
                           "demo corpus)")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--table", type=int, choices=(2, 3), default=None,
                      help="the paper's table: 3 (ablation, the default) or 2 (pre-trained models); "
                           "the same as --grid table3 / table2")
    grid.add_argument("--grid", default=None,
                      help="grid file: a name in search_spaces/ or a YAML path (default: table3)")
    grid.add_argument("--rows", default=None, help="run only these rows, e.g. wavlm-large,hubert-large")
    grid.add_argument("--seeds", default=None,
                      help="repeat every fold over seeds: a count N (seeds 0..N-1) or a list like 0,1,2; each "
                           "seed is a fold run of its own (MELD: mean ± std over seeds)")
    grid.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="fix a training setting for every row, e.g. --set epochs=10 (repeatable)")
    resources = add_resource_options(parser, unit="row")
    resources.add_argument("--max-concurrent", type=int, default=None, help="rows at once (default: what fits)")
    where = add_output_options(parser, run="grid", name_default="<table>-<corpus>-<date>-<time>",
                               experiment=DEFAULT_EXPERIMENT)
    where.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the table and plot (default: ./{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.demo and args.manifest is None:
        parser.error("give --manifest and --cache, or --demo")
    if args.table is not None and args.grid is not None:
        parser.error("give --table or --grid, not both")
    args.grid = args.grid or f"table{args.table or 3}"
    if args.workers_per_fold < 1:
        parser.error("--workers-per-fold must be at least 1")
    check_retries(parser, args, "fold_retries")
    return args


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """`--seeds`: a count N (seeds 0..N-1) or a comma list; none = each fold once with the config's seed."""
    if not text:
        return ()
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: give a count like 5 or seeds like 0,1,2") from None
    if "," not in text:
        seeds = tuple(range(seeds[0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def parse_row_caches(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (row, sep, cache) in zip(items, pairs) if not (row and sep and cache)]
    if bad:
        raise SystemExit(f"--row-cache {bad[0]!r}: give ROW=CACHE")
    return {row: cache for row, _, cache in pairs}


def row_caches(grid: Grid, data: SweepData, args) -> dict[str, tuple[str, dict[str, object]]]:
    """Every row's checked cache and its identity: its own (under --caches-root, or --row-cache), else --cache.
    With --demo the caches the demo makes offline are made first; a missing cache exits with the command to make it."""
    root = args.caches_root or (str(Path(data.cache).parent) if data.cache else data.manifest_dir)
    try:
        own = grid.row_caches(root, parse_row_caches(args.row_caches))
    except SearchSpaceError as err:
        raise SystemExit(f"--row-cache: {err}") from None
    if args.demo:
        ensure_demo_caches(data.manifest_dir, own, {n: i.extractor for n, i in grid.info.items()},
                           Path(data.manifest_dir).parent / "models")
    missing = {row: cache for row, cache in own.items() if not cache_exists(cache)}
    if missing:
        hints = "\n".join(f"  {row}: tfmamba features --manifest {data.manifest_dir} --extractor "
                          f"{grid.info[row].extractor or 'EXTRACTOR'} --out {cache}" for row, cache in missing.items())
        raise SystemExit(f"no feature cache for row(s) {list(missing)}; make them (or pick rows with --rows, "
                         f"or point --caches-root / --row-cache at them):\n{hints}")
    without = [row for row in grid.rows if row not in own]
    if without and not data.cache:
        raise SystemExit(f"row(s) {without} name no cache of their own: give --cache")
    checked = {row: check_cache(cache, data.manifest_dir, f"row {row}'s cache") for row, cache in own.items()}
    return {row: checked.get(row, (data.cache, data.cache_metadata)) for row in grid.rows}


def row_parameters(grid: Grid, data: SweepData, caches: dict[str, tuple[str, dict]]) -> dict[str, int]:
    """Trainable parameters of each row's network for this corpus's classes and its cache's feature dimension."""
    from tfmamba.corpora.manifest import read_manifest_metadata
    from tfmamba.model import TFMamba, count_parameters

    num_classes = len(json.loads(read_manifest_metadata(data.manifest_dir)["labels"]))
    return {name: count_parameters(TFMamba(grid.space.trial_config(row).model_config(
        num_classes, int(caches[name][1]["dim"])))) for name, row in grid.rows.items()}


def open_parent_run(grid: Grid, name: str, data: SweepData, uri: str, experiment_id: str, args,
                    seeds: tuple[int, ...]) -> str:
    """The grid's MLflow parent run (named after the table) with what shaped it; a resumed grid keeps its own."""
    run_id = mlflow_runs.get_or_create_run(uri, experiment_id, mlflow_runs.sweep_tags(name), grid.table)
    tags = {TABLE_TAG: grid.table, "corpus": data.corpus, "rows": ",".join(grid.rows), "git_commit": git_commit(),
            "manifest": data.manifest_dir, "cache": data.cache, "grid": str(grid.path)}
    mlflow_runs.set_tags(uri, run_id, tags | {f"cache.{k}": v for k, v in data.cache_metadata.items()})
    client = mlflow_runs.client(uri)
    if client.get_run(run_id).data.params:
        return run_id
    mlflow_runs.log_params(uri, run_id, {"folds": ",".join(map(str, data.folds)), "base_config": grid.space.base,
                                         "seeds": ",".join(map(str, seeds)) or "config",
                                         "workers_per_fold": args.workers_per_fold,
                                         "gpus_per_worker": args.gpus_per_worker,
                                         **{f"fixed.{k}": v for k, v in grid.space.fixed.items()}})
    client.log_artifact(run_id, str(grid.path), artifact_path="grid")
    client.log_text(run_id, grid.space.base_config().to_yaml(), "grid/base_config.yaml")
    return run_id


def run_grid(grid: Grid, ctx: SweepContext, storage: str, name: str, max_concurrent: int,
             trial_resources: dict[str, float], resume: bool):
    """Fit the Tune grid (one trial per row, no searcher, no early stopping), or restore it with `resume`."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources)
    path = f"{storage}/{name}"
    if resume:
        return restore_tuner(path, trainable, "grid").fit()
    tuner = tune.Tuner(trainable, param_space=grid.param_space(),
                       tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1,
                                                   max_concurrent_trials=max_concurrent),
                       run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1))
    return tuner.fit()


def label_rows(grid: Grid, trials, params: dict[str, int], caches: dict[str, tuple[str, dict]], uri: str) -> None:
    """Name each trial's run after its row, tag its paper row and features, log the row's parameter count."""
    for trial in trials:
        if trial.run_id is None:
            continue
        row = mlflow_runs.client(uri).get_run(trial.run_id).data.params.get(ROW_KEY)
        if row not in grid.rows:
            continue
        cache, meta = caches[row]
        extractor = str(meta.get("extractor") or "?")
        features = f"{grid.info[row].extractor or Path(extractor).name} ({meta.get('dim')})"
        mlflow_runs.set_tags(uri, trial.run_id, {"row": row, "mlflow.runName": row, "features": features,
                                                 "paper_row": grid.info[row].paper_row or row, "cache": cache})
        mlflow_runs.log_metrics(uri, trial.run_id, {"n_params": params[row]})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    started = time.monotonic()
    seeds = parse_seeds(args.seeds)
    try:
        grid = load_grid(args.grid, args.demo, parse_overrides(args.overrides))
        grid = grid.select(args.rows.split(",")) if args.rows else grid
    except SearchSpaceError as err:
        raise SystemExit(f"grid: {err}") from None
    data = resolve_data(args.manifest, args.cache, parse_folds(args.folds, demo=args.manifest is None),
                        cache_required=not any(info.cache for info in grid.info.values()))
    caches = row_caches(grid, data, args)
    if not data.cache:
        data = replace(data, cache=caches[next(iter(grid.rows))][0], cache_metadata={})
    params = row_parameters(grid, data, caches)
    storage = storage_root(args.storage_path)
    name = (sweep_name(args, grid.space, storage) if args.resume
            else args.name or f"{grid.table}-{data.corpus}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.resume and "://" not in storage and Path(storage, name).exists():
        raise SystemExit(f"{storage}/{name} already exists: add --resume to continue it, or pick another --name")
    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    out_root = output_root(storage, name)
    preflight(args, storage, out_root, uri)
    experiment_id = mlflow_runs.ensure_experiment(uri, args.experiment,
                                                  mlflow_runs.default_artifact_location(uri, args.experiment))
    parent_run_id = open_parent_run(grid, name, data, uri, experiment_id, args, seeds)
    if args.resume:
        mlflow_runs.mark_stale_runs(uri, experiment_id, name)
    start_ray(args.address, uri)
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, len(grid.rows),
                  len(data.folds) * max(1, len(seeds)), args.max_concurrent, args.parallel_folds)
    ctx = SweepContext(sweep_id=name, space=grid.space, manifest_dir=data.manifest_dir, cache=data.cache,
                       folds=data.folds, out_root=out_root, train_storage=f"{storage}/{name}-train", tracking_uri=uri,
                       experiment_id=experiment_id, parent_run_id=parent_run_id,
                       workers_per_fold=args.workers_per_fold, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, parallel_folds=layout.parallel_folds,
                       fold_retries=args.fold_retries, seeds=seeds,
                       row_caches={row: cache for row, (cache, _) in caches.items()})
    repeats = f" x {len(seeds)} seeds" if seeds else ""
    print(f"\n{grid.table} {name}: {len(grid.rows)} rows x {len(data.folds)} folds{repeats} of {data.corpus}, "
          f"{layout.max_concurrent} row(s) at once, {layout.parallel_folds} fold(s) per row at once\n"
          f"  MLflow: {uri} (experiment {args.experiment!r}, parent run {parent_run_id})\n"
          f"  resume after an interruption: the same command plus --resume --name {name}\n", flush=True)
    results = run_grid(grid, ctx, storage, name, layout.max_concurrent, layout.trial_resources, args.resume)
    trials = collect_trials(results, ctx)
    close_runs(trials, ctx)
    label_rows(grid, trials, params, caches, uri)
    failed = [t for t in trials if t.status != "complete"]
    wall = time.monotonic() - started
    mlflow_runs.log_metrics(uri, parent_run_id, {"wall_seconds": wall})
    mlflow_runs.end_run(uri, parent_run_id, "FAILED" if failed else "FINISHED")
    paths = build_report(uri, mlflow_runs.client(uri).get_run(parent_run_id), args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    for trial in failed:
        print(f"row {trial.config.get(ROW_KEY, trial.trial_id)}: {trial.status} {trial.error or ''}")
    print(f"{grid.table} finished in {wall:.0f} s\n" + "\n".join(f"{ext}: {path}" for ext, path in paths.items())
          + f"\nMLflow parent run: {parent_run_id} (experiment {args.experiment!r}, {uri})\n"
          f"Rebuild the report: python orchestration/report.py --experiment {args.experiment} --table {grid.table} "
          f"--run-id {parent_run_id}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
