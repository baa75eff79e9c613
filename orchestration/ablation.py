"""Reproduce the paper's Tables III and II: every row as a full cross-validation, a Ray Tune grid,
tracked in MLflow, then a table and a plot beside the paper's numbers.

    python orchestration/ablation.py --demo                          # Table III, demo corpus, local Ray
    python orchestration/ablation.py --manifest data/iemocap --cache data/iemocap/wavlm-large \\
        --gpus-per-worker 1 --storage-path s3://bucket/ablations --address auto
    python orchestration/ablation.py --table 2 --manifest data/iemocap --caches-root caches/iemocap
    python orchestration/ablation.py --manifest data/meld --cache caches/meld/wavlm-large --seeds 5

The rows come from grids/table3.yaml (variant and CMDT weight per row) or table2.yaml
(one feature cache per pre-trained model), the rest from the base training config: `paper`, or
`demo` with --demo. Each row is one Tune trial running the sweep's trial machinery: a
TorchTrainer per fold (and per seed with --seeds), folds in parallel. MLflow gets one parent run
(`table3`/`table2`), one child per row and the fold runs under each. The report (test WA/UA, or
WF1 on MELD, mean ± std over folds and seeds) goes to reports/<table>-<corpus>.md, .csv and .png;
`python orchestration/report.py` rebuilds it from MLflow alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from orchestration import console, launch, mlflow_runs, mlflow_ui, options, stop_signal
from orchestration.disk_guard import FreeSpaceGuard
from orchestration.fold_lanes import close_dispatcher
from orchestration.sweep_data import resolve_data
from orchestration.grid import Grid, load_grid
from orchestration.table_report import DEFAULT_EXPERIMENT, DEFAULT_OUT, TABLE_TAG, build_report
from orchestration.resources import REUSE_TRIAL_ACTORS, Layout, plan
from orchestration.results import close_runs, collect_trials, unfinished_trials
from orchestration.rows import label_rows, parse_seeds, row_caches, row_label, row_parameters
from orchestration.search_space import SearchSpaceError
from orchestration.trial import ROW_KEY, SweepContext, objective
from tfmamba.corpora.manifest import read_manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""Give --manifest and --cache (a prepared corpus and its feature cache), or --demo.
Table II rows name their own caches: --manifest with --caches-root (and --row-cache ROW=PATH), see
grids/table2.yaml. MELD has one official split: repeat it over seeds with --seeds 5.
Resume an interrupted grid: the same command plus --resume (and its --name; else the newest grid
under --storage-path); finished rows are not rerun and write no new MLflow runs. It refuses
--rows, --folds, --seeds or --set values other than those the grid started with, naming them.
MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db.""")
    data = options.add_data_options(parser, manifest_default="or --demo")
    data.add_argument("--caches-root", default=None,
                      help="folder (or s3://...) holding the caches rows name (Table II); default: the folder "
                           "holding --cache, else the manifest folder")
    data.add_argument("--row-cache", dest="row_caches", action="append", default=[], metavar="ROW=CACHE",
                      help="this row's cache instead of the one its grid names (repeatable)")
    data.add_argument("--demo", action="store_true",
                      help="the demo training config; without --manifest/--cache also the demo corpus "
                           "(./data/demo)")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--table", type=int, choices=(2, 3), default=None,
                      help="the paper's table: 3 (ablation, the default) or 2 (pre-trained models); "
                           "the same as --grid table3 / table2")
    grid.add_argument("--grid", default=None,
                      help="grid file: a name in grids/ or a YAML path (default: table3)")
    grid.add_argument("--rows", default=None, help="run only these rows, e.g. wavlm-large,hubert-large")
    grid.add_argument("--seeds", default=None,
                      help="repeat every fold over seeds: a count N (seeds 0..N-1) or a list like 0,1,2; each "
                           "seed is a fold run of its own (MELD: mean ± std over seeds)")
    options.add_overrides_option(grid, unit="row")
    options.add_resource_options(parser, unit="row")
    where = options.add_output_options(parser, run="grid", name_default="<table>-<corpus>-<date>-<time>",
                                       experiment=DEFAULT_EXPERIMENT)
    where.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the table and plot (default: ./{DEFAULT_OUT})")
    options.add_verbose_option(parser, unit="row")
    args = parser.parse_args(argv)
    if not args.demo and args.manifest is None:
        parser.error("give --manifest and --cache, or --demo")
    if args.table is not None and args.grid is not None:
        parser.error("give --table or --grid, not both")
    args.grid = args.grid or f"table{args.table or 3}"
    options.check_common(parser, args)
    return args


def run_grid(grid: Grid, ctx: SweepContext, where: launch.ResultsLocation, layout: Layout, resume: bool,
             verbose: bool):
    """Fit the Tune grid (one trial per row, no searcher, no early stopping), or restore it with `resume`; one
    progress line per row start, fold run and end unless `verbose` (Tune's status tables)."""
    from ray import tune

    from orchestration.progress import ProgressPrinter

    trainable = launch.trainable(ctx, layout.trial_resources)
    if resume:
        return launch.restore_tuner(where.tune_path, trainable, "grid").fit()
    progress = ProgressPrinter(ctx.metric, ctx.mode, len(ctx.folds), len(grid.rows), label=row_label,
                               seeds=len(ctx.seeds))
    tuner = tune.Tuner(trainable, param_space=grid.param_space(),
                       tune_config=tune.TuneConfig(metric=ctx.metric, mode=ctx.mode, num_samples=1,
                                                   max_concurrent_trials=layout.max_concurrent,
                                                   reuse_actors=REUSE_TRIAL_ACTORS),
                       run_config=tune.RunConfig(name=where.name, storage_path=where.storage,
                                                 verbose=1 if verbose else 0,
                                                 callbacks=[progress, *launch.result_loggers()]))
    return tuner.fit()


def main(argv: list[str] | None = None) -> int:
    launch.configure_console()
    args = parse_args(argv)
    started = time.monotonic()
    seeds = parse_seeds(args.seeds)
    try:
        grid = load_grid(args.grid, args.demo, options.parse_overrides(args.overrides))
        grid = grid.select(args.rows.split(",")) if args.rows is not None else grid
    except SearchSpaceError as err:
        raise SystemExit(f"grid: {err}") from None
    data = resolve_data(args.manifest, args.cache, options.parse_folds(args.folds, demo=args.manifest is None),
                        cache_required=not any(info.cache for info in grid.info.values()))
    caches = row_caches(grid, data, args.caches_root, args.row_caches, args.demo)
    if not data.cache:
        data = replace(data, cache=caches[next(iter(grid.rows))][0], cache_metadata={})
    params = row_parameters(grid, data, caches)
    where = launch.results_location(args, lambda: launch.dated_name(f"{grid.table}-{data.corpus}"), "grid",
                                    also_writes={"report folder (--out)": str(Path(args.out).resolve())})
    metric, mode = objective(data.corpus, grid.space)
    run_params = launch.parent_run_params(args, data.folds, grid.space, rows=",".join(grid.rows),
                                          seeds=",".join(map(str, seeds)) or "config")
    if args.resume:
        launch.check_resume(where, run_params, "grid", "start a new grid with another --name")
    launch.start_ray(args.address, where.tracking_uri, args.verbose)
    launch.check_fold_nodes(args, where, {f"row {row}'s feature cache": cache for row, (cache, _) in caches.items()})
    units = len(data.folds) * max(1, len(seeds))
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, len(grid.rows), units,
                  args.max_concurrent, args.parallel_folds, max_fold_slots=args.max_fold_slots,
                  joined=args.address is not None)
    manifest = read_manifest(data.manifest_dir)
    dispatcher = launch.start_lanes(args, where, manifest, layout.parallel_slots, len(grid.rows) * units)
    experiment_id, parent_run_id = launch.open_parent_run(
        where, grid.table,
        tags={**data.tags(), TABLE_TAG: grid.table, "rows": ",".join(grid.rows), "grid": str(grid.path)},
        params=run_params, files={str(grid.path): "grid"},
        texts={"grid/base_config.yaml": grid.space.base_config().to_yaml()}, resume=args.resume)
    ctx = launch.sweep_context(where, data, grid.space, experiment_id, parent_run_id, layout.parallel_folds,
                               manifest, dispatcher, seeds=seeds,
                               row_caches={row: cache for row, (cache, _) in caches.items()}, metric=metric, mode=mode)
    repeats = f" x {len(seeds)} seeds" if seeds else ""
    print(f"\n{grid.table} {where.name}: {len(grid.rows)} rows x {len(data.folds)} folds{repeats} of {data.corpus}, "
          f"{layout.max_concurrent} row(s) at once, {layout.parallel_folds} fold(s) per row at once\n"
          f"  MLflow: {where.tracking_uri} (experiment {args.experiment!r}, parent run {parent_run_id})\n"
          f"  resume after an interruption: the same command plus --resume --name {where.name}\n", flush=True)
    with FreeSpaceGuard(where.folders, args.min_free_gb) as guard:
        results = run_grid(grid, ctx, where, layout, args.resume, args.verbose)
    close_dispatcher(0)
    trials = collect_trials(results, ctx, unfinished_trials(where.tune_path))
    close_runs(trials, ctx)
    label_rows(grid, trials, params, caches, where.tracking_uri)
    close_dispatcher()
    wall = time.monotonic() - started
    mlflow_runs.log_metrics(where.tracking_uri, parent_run_id, {console.wall_metric(args.resume): wall})
    interrupted = [t.config.get(ROW_KEY, t.trial_id) for t in trials if t.status == "interrupted"]
    if interrupted:
        mlflow_runs.end_run(where.tracking_uri, parent_run_id, "KILLED")
        print(f"{grid.table} {where.name} {console.ended(wall, True, args.resume)} (rows not finished: "
              f"{', '.join(interrupted)}); continue it with the same command plus --resume --name {where.name}",
              flush=True)
        if guard.reason:
            print(guard.advice(), flush=True)
            return 1
        return 130
    failed = [t for t in trials if t.status != "complete"]
    mlflow_runs.end_run(where.tracking_uri, parent_run_id, "FAILED" if failed else "FINISHED")
    order = {row: i for i, row in enumerate(grid.rows)}  # side by side in the table's order
    row_runs = [t.run_id for t in sorted(trials, key=lambda t: order.get(t.config.get(ROW_KEY), len(order)))
                if t.status == "complete" and t.run_id]
    paths = build_report(where.tracking_uri, mlflow_runs.get_run(where.tracking_uri, parent_run_id), args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    for trial in failed:
        print(f"row {trial.config.get(ROW_KEY, trial.trial_id)}: {trial.status} {trial.error or ''}")
    print(f"{grid.table} {console.ended(wall, False, args.resume)}\n"
          + "\n".join(f"{ext}: {path}" for ext, path in paths.items())
          + f"\nMLflow parent run: {parent_run_id} (experiment {args.experiment!r}, {where.tracking_uri})\n"
          f"Compare the rows: {mlflow_ui.ui_command(where.tracking_uri, experiment_id, row_runs)}\n"
          f"Rebuild the report: python orchestration/report.py --experiment {shlex.quote(args.experiment)} "
          f"--table {grid.table} "
          f"--run-id {parent_run_id}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    stop_signal.handle_sigterm_as_ctrl_c()  # the process's own: not for a caller of main()
    sys.exit(main())
