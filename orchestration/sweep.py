"""Sweep TF-Mamba's hyper-parameters: Ray Tune + Optuna (TPE), each trial a k-fold cross-validation on
Ray Train, everything tracked in MLflow.

    python orchestration/sweep.py                      # the demo: demo corpus, private local Ray, ./mlflow.db
    python orchestration/sweep.py --space default --manifest data/iemocap --cache data/iemocap/wavlm \\
        --num-samples 40 --gpus-per-worker 1 --storage-path s3://bucket/sweeps --address auto

The metric optimised is the mean over folds of the corpus's validation selection metric
(`valid_ua_mean`; `valid_wf1_mean` on MELD); test metrics are recorded for every fold and trial
but never steer the search. ASHA stops trials whose running mean over finished folds falls
behind (a stopped trial starts no further fold and is PRUNED in Optuna). MLflow gets one run per
sweep, a nested run per trial (named `t07 λ=0.27 τ=0.33 ω=0.11 d=16`) and a nested run per fold;
the best trial's model is logged as a pyfunc model, registered with --register NAME (the demo
corpus as tfmamba-demo).
The Optuna study is stored (study.py): optuna-dashboard shows it, --warm-start reuses it.
--objectives valid_ua_mean:max,params:min searches accuracy against cost (pareto.py).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time

from orchestration import launch, mlflow_ui, options, pareto, registry, stop_signal, study
from orchestration.disk_guard import FreeSpaceGuard
from orchestration.fold_lanes import close_dispatcher
from orchestration.sweep_data import resolve_data
from orchestration.mlflow_runs import report_logging_gaps
from orchestration.resources import REUSE_TRIAL_ACTORS, Layout, plan
from orchestration.results import finish_sweep, print_summary, unfinished_trials
from orchestration.search_space import SearchSpace, SearchSpaceError, load_search_space
from orchestration.trial import TIME_ATTR, SweepContext, objective
from tfmamba.corpora.manifest import read_manifest

logger = logging.getLogger("orchestration.sweep")

DEFAULT_SPACE = "demo"
DEFAULT_EXPERIMENT = "tfmamba-sweeps"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""With no --manifest/--cache the built-in demo corpus is prepared under ./data/demo (once).
Ray: without --address a private local Ray is started for this run, even if another Ray runs on
this machine; --address auto joins the machine's cluster (as under `ray submit`).
MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI (the cluster config sets it to the head's MLflow
server), else sqlite:///./mlflow.db with artifacts in ./mlartifacts. Browse the results with the
`mlflow ui ...` command printed at the end.
Resume an interrupted sweep: the same command plus --resume (and its --name; the newest sweep
under --storage-path is taken otherwise). Finished trials are not rerun. Options that define the
sweep (--num-samples, --folds, --seed, --set, the space's base config) must be those it started
with; it refuses others, naming them (--warm-start runs more trials in a new sweep), and a sweep
whose driver still runs (one driver per sweep).
Optuna: each sweep is a study named after it, stored in optuna.db beside an SQLite mlflow.db (else
beside the Tune state); the sweep prints the optuna-dashboard command that shows it. --warm-start
NAME starts TPE from the finished trials of the earlier sweep NAME (same or overlapping space).""",
    )
    options.add_data_options(parser, manifest_default="default: the demo corpus")
    search = parser.add_argument_group("search")
    search.add_argument("--space", default=DEFAULT_SPACE,
                        help="search space: a name in search_spaces/ (default, demo) or a YAML path "
                             f"(default: {DEFAULT_SPACE})")
    options.add_overrides_option(search, unit="trial")
    search.add_argument("--num-samples", type=int, default=4, help="trials to run (default: 4)")
    search.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    search.add_argument("--objectives", metavar="METRIC:DIR,...", default=None,
                        help="search more than one objective, e.g. valid_ua_mean:max,params:min or "
                             "valid_ua_mean:max,latency_ms:min (the model's parameter count, or one forward pass "
                             "of 300 frames on the trial's CPU): multi-objective TPE, no early stopping, the "
                             "Pareto front tagged in MLflow and printed (default: the corpus's validation metric)")
    search.add_argument("--warm-start", metavar="SWEEP", default=None,
                        help="seed TPE with the finished trials of the earlier sweep SWEEP (its --name), "
                             "read from the same Optuna storage; trials outside this space are skipped")
    options.add_verbose_option(parser, unit="trial")
    search.add_argument("--study-storage", metavar="URL", default=None,
                        help="Optuna storage URL for the studies (default: optuna.db beside an SQLite "
                             "mlflow.db, else beside the Tune state)")
    resources = options.add_resource_options(parser, unit="trial")
    resources.add_argument("--trial-retries", type=int, default=0,
                           help="Tune retries of a failed trial; finished folds are kept (default: 0; -1: no limit)")
    where = options.add_output_options(parser, run="sweep", name_default="<space>-<date>-<time>",
                                       experiment=DEFAULT_EXPERIMENT)
    where.add_argument("--register", metavar="NAME", default=None,
                       help="register the best model as a new version of NAME in the MLflow model registry, with "
                            "the alias 'champion' while it is the best on the sweep's metric (default: not "
                            f"registered; the demo corpus registers as {registry.DEMO_NAME!r})")
    args = parser.parse_args(argv)
    if args.register is None and args.manifest is None:
        args.register = registry.DEMO_NAME
    if args.register is not None:
        try:
            registry.check_name(args.register)
        except ValueError as err:
            parser.error(str(err))
    if args.num_samples < 1:
        parser.error("--num-samples must be at least 1")
    if args.objectives is not None:
        try:
            args.objectives = pareto.parse_objectives(args.objectives)
        except pareto.ObjectiveError as err:
            parser.error(str(err))
    if args.warm_start and args.resume:
        parser.error("--warm-start starts a new sweep; --resume continues one (its study included): pick one")
    options.check_common(parser, args)
    return args


def prepare_study(args: argparse.Namespace, name: str, space: SearchSpace, modes: list[str],
                  storage_url: str) -> None:
    """Before the sweep's lanes and MLflow run: the new sweep's study name must be free in the storage, and
    `--warm-start`'s finished trials are copied into it (exits naming the problem)."""
    launch.join_warm_up()  # it imports Tune and Optuna
    from ray.tune.search.optuna import OptunaSearch

    try:
        storage = study.open_storage(storage_url)
        if study.study_exists(storage, name):
            raise study.StudyError(f"an Optuna study named {name!r} already exists in {storage_url}; pick another "
                                   f"--name, or delete it: optuna delete-study --storage {shlex.quote(storage_url)} "
                                   f"--study-name {name}")
        if args.warm_start:
            distributions = OptunaSearch.convert_search_space(space.param_space())
            copied = study.warm_start(storage, args.warm_start, name, modes, distributions)
            print(f"Warm start: {copied} finished trial(s) of sweep {args.warm_start} seed this sweep's TPE",
                  flush=True)
    except study.StudyError as err:
        raise SystemExit(f"sweep: {err}") from None


def build_searcher(args: argparse.Namespace, where: launch.ResultsLocation, space: SearchSpace, ctx: SweepContext,
                   max_concurrent: int, storage_url: str, objectives: list[pareto.Objective]):
    """Optuna's multivariate TPE over the study stored at `storage_url` and named after the sweep; a trial
    stopped before its last fold is told to Optuna as PRUNED. With several objectives the searcher holds the
    space and the metrics itself (Tune's TuneConfig takes one metric only)."""
    from orchestration.pruned_search import ProjectOptunaSearch

    multi = len(objectives) > 1
    own = dict(space=ProjectOptunaSearch.convert_search_space(space.param_space()),
               metric=[name for name, _ in objectives], mode=[mode for _, mode in objectives]) if multi else {}
    return ProjectOptunaSearch(points_to_evaluate=space.points_to_evaluate or None,
                               sampler=study.sampler(args.seed, max_concurrent, len(objectives)), study_name=where.name,
                               storage=study.open_storage(storage_url), n_folds=len(ctx.folds), time_attr=TIME_ATTR,
                               **own)


def build_tuner(args: argparse.Namespace, where: launch.ResultsLocation, space: SearchSpace, ctx: SweepContext,
                layout: Layout, storage_url: str,
                objectives: list[pareto.Objective]):
    """A new Tuner (Optuna's TPE on a stored study, ASHA over finished folds), or the restored one with --resume
    (its searcher, and with it the study, comes back from Tune's state)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from orchestration.progress import BestSoFar, ProgressPrinter

    trainable = launch.trainable(ctx, layout.trial_resources)
    if args.resume:
        return launch.restore_tuner(where.tune_path, trainable, "sweep")
    n_folds = len(ctx.folds)
    stopping = space.early_stopping
    scheduler = None
    multi = len(objectives) > 1
    if stopping.enabled and n_folds > 1 and not multi:  # ASHA ranks trials on one metric
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=n_folds, grace_period=min(stopping.grace_period, n_folds),
                                  reduction_factor=stopping.reduction_factor)
    searcher = build_searcher(args, where, space, ctx, layout.max_concurrent, storage_url, objectives)
    return tune.Tuner(
        trainable,
        param_space=None if multi else space.param_space(),
        tune_config=tune.TuneConfig(metric=None if multi else ctx.metric, mode=None if multi else ctx.mode,
                                    search_alg=searcher, scheduler=scheduler,
                                    num_samples=args.num_samples, max_concurrent_trials=layout.max_concurrent,
                                    reuse_actors=REUSE_TRIAL_ACTORS),
        run_config=tune.RunConfig(name=where.name, storage_path=where.storage, verbose=1 if args.verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=args.trial_retries),
                                  callbacks=[ProgressPrinter(ctx.metric, ctx.mode, n_folds, args.num_samples),
                                             BestSoFar(ctx.tracking_uri, ctx.parent_run_id, ctx.metric, ctx.mode,
                                                       n_folds), *launch.result_loggers()]),
    )


def main(argv: list[str] | None = None) -> int:
    launch.configure_console()
    args = parse_args(argv)
    try:
        space = load_search_space(args.space, options.parse_overrides(args.overrides))
    except SearchSpaceError as err:
        raise SystemExit(f"search space: {err}") from None
    logger.info("%s", space.summary())
    where = launch.results_location(args, lambda: launch.dated_name(space.name), "sweep")
    data = resolve_data(args.manifest, args.cache, options.parse_folds(args.folds, demo=args.manifest is None))
    started = time.monotonic()  # the sweep's wall: from its data being ready (the demo's is prepared once, above)
    metric, mode = objective(data.corpus, space)
    objectives = args.objectives or [(metric, mode)]
    metric, mode = next((n, m) for n, m in objectives if n not in pareto.COSTS)  # picks the best model
    study_url = where.study_url
    params = launch.parent_run_params(args, data.folds, space, num_samples=args.num_samples, seed=args.seed)
    if args.resume:
        launch.check_resume(where, params, "sweep", f"start a new sweep seeded with its complete trials: "
                            f"--warm-start {where.name} --name NEW_NAME")
    launch.start_ray(args.address, where.tracking_uri, args.verbose)  # its warm-up imports Tune and Optuna meanwhile
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, args.num_samples,
                  len(data.folds), args.max_concurrent, args.parallel_folds,
                  max_fold_slots=args.max_fold_slots, joined=args.address is not None)
    if not args.resume:
        prepare_study(args, where.name, space, [m for _, m in objectives], study_url)
    launch.check_fold_nodes(args, where, {"the feature cache --cache": data.cache})
    manifest = read_manifest(data.manifest_dir)
    costs = tuple(n for n, _ in objectives if n in pareto.COSTS)
    dispatcher = launch.start_lanes(args, where, manifest, layout.parallel_slots, args.num_samples * len(data.folds),
                                    costs)
    experiment_id, parent_run_id = launch.open_parent_run(
        where, where.name,
        tags={**data.tags(), "search_space": space.name, "metric": f"{metric} ({mode})",
              **({"objectives": ", ".join(f"{n} ({m})" for n, m in objectives)} if len(objectives) > 1 else {})},
        params=params, files={str(space.path): "search_space"},
        texts={"search_space/base_config.yaml": space.base_config().to_yaml()}, resume=args.resume)
    ctx = launch.sweep_context(where, data, space, experiment_id, parent_run_id, layout.parallel_folds,
                               manifest, dispatcher, metric=metric, mode=mode)
    print(f"\nSweep {where.name}: {args.num_samples} trials x {len(data.folds)} folds of {data.corpus}, "
          f"{layout.max_concurrent} trial(s) at once, {layout.parallel_folds} fold(s) per trial at once\n"
          f"  results: {where.tune_path}   MLflow: {where.tracking_uri} (experiment {args.experiment!r}, "
          f"run {parent_run_id})\n"
          f"  Optuna study {where.name!r}: {study.dashboard_command(study_url)}\n"
          f"  resume after an interruption: python orchestration/sweep.py --resume --name {where.name} "
          f"--storage-path {shlex.quote(args.storage_path)} ...(same options)\n", flush=True)
    with FreeSpaceGuard(where.folders, args.min_free_gb) as guard:
        results = build_tuner(args, where, space, ctx, layout, study_url, objectives).fit()
    close_dispatcher(0)
    summary = finish_sweep(results, ctx, time.monotonic() - started, layout.parallel_slots, args.register,
                           objectives, unfinished_trials(where.tune_path), resumed=args.resume)
    try:
        if not summary.interrupted:  # the resumed sweep draws them
            mlflow_ui.log_study_plots(ctx.tracking_uri, ctx.parent_run_id, study_url, where.name,
                                      [name for name, _ in objectives])
    except Exception as err:  # the plots are a convenience; the sweep's results are already safe
        logger.warning("Optuna plots not logged: %s", err)
    print_summary(summary, ctx, args.experiment, where.tune_path)
    print(f"Optuna study {where.name!r}: {study.dashboard_command(study_url)}", flush=True)
    report_logging_gaps(ctx.tracking_uri, ctx.experiment_id, ctx.sweep_id)
    close_dispatcher()
    if summary.interrupted and guard.reason:
        print(guard.advice(), flush=True)
        return 1
    if summary.interrupted:
        return 130
    return 0 if summary.best is not None else 1


if __name__ == "__main__":
    stop_signal.handle_sigterm_as_ctrl_c()  # the process's own: not for a caller of main()
    sys.exit(main())
