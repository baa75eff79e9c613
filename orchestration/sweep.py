"""Sweep TF-Mamba's hyper-parameters: Ray Tune + Optuna (TPE), each trial a k-fold cross-validation on
Ray Train, everything tracked in MLflow.

    python orchestration/sweep.py                      # the demo: demo corpus, private local Ray, ./mlflow.db
    python orchestration/sweep.py --space default --manifest data/iemocap --cache data/iemocap/wavlm \\
        --num-samples 40 --gpus-per-worker 1 --storage-path s3://bucket/sweeps --address auto

The metric optimised is the mean over folds of the corpus's validation selection metric
(`valid_ua_mean`; `valid_wf1_mean` on MELD); test metrics are recorded for every fold and trial
but never steer the search. ASHA stops trials whose running mean over finished folds falls
behind. MLflow gets one run per sweep, a nested run per trial and a nested run per fold; the
best trial's model is logged as a pyfunc model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from orchestration import launch, options
from orchestration.sweep_data import resolve_data
from orchestration.mlflow_runs import report_logging_gaps
from orchestration.resources import plan
from orchestration.results import finish_sweep, print_summary
from orchestration.search_space import SearchSpace, SearchSpaceError, load_search_space
from orchestration.trial import TIME_ATTR, SweepContext, objective

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
under --storage-path is taken otherwise). Finished trials are not rerun.""",
    )
    options.add_data_options(parser, manifest_default="default: the demo corpus")
    search = parser.add_argument_group("search")
    search.add_argument("--space", default=DEFAULT_SPACE,
                        help="search space: a name in search_spaces/ (default, demo) or a YAML path "
                             f"(default: {DEFAULT_SPACE})")
    options.add_overrides_option(search, unit="trial")
    search.add_argument("--num-samples", type=int, default=4, help="trials to run (default: 4)")
    search.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    resources = options.add_resource_options(parser, unit="trial")
    resources.add_argument("--trial-retries", type=int, default=0,
                           help="Tune retries of a failed trial; finished folds are kept (default: 0)")
    options.add_output_options(parser, run="sweep", name_default="<space>-<date>-<time>",
                               experiment=DEFAULT_EXPERIMENT)
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num-samples must be at least 1")
    options.check_common(parser, args)
    return args


def build_tuner(args: argparse.Namespace, where: launch.ResultsLocation, space: SearchSpace, ctx: SweepContext,
                max_concurrent: int, trial_resources: dict[str, float]):
    """A new Tuner (Optuna's TPE, ASHA over finished folds), or the restored one with --resume."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = launch.trainable(ctx, trial_resources)
    if args.resume:
        return launch.restore_tuner(where.tune_path, trainable, "sweep")
    n_folds = len(ctx.folds)
    stopping = space.early_stopping
    scheduler = None
    if stopping.enabled and n_folds > 1:
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=n_folds, grace_period=min(stopping.grace_period, n_folds),
                                  reduction_factor=stopping.reduction_factor)
    searcher = OptunaSearch(points_to_evaluate=space.points_to_evaluate or None, seed=args.seed)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(metric=ctx.metric, mode=ctx.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=args.num_samples, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=where.name, storage_path=where.storage, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=args.trial_retries)),
    )


def main(argv: list[str] | None = None) -> int:
    launch.configure_console()
    args = parse_args(argv)
    started = time.monotonic()
    try:
        space = load_search_space(args.space, options.parse_overrides(args.overrides))
    except SearchSpaceError as err:
        raise SystemExit(f"search space: {err}") from None
    logger.info("%s", space.summary())
    where = launch.results_location(args, lambda: launch.dated_name(space.name), "sweep")
    data = resolve_data(args.manifest, args.cache, options.parse_folds(args.folds, demo=args.manifest is None))
    metric, mode = objective(data.corpus, space)
    launch.start_ray(args.address, where.tracking_uri)
    launch.check_fold_nodes(args, where, {"the feature cache --cache": data.cache})
    experiment_id, parent_run_id = launch.open_parent_run(
        where, where.name,
        tags={**data.tags(), "search_space": space.name, "metric": f"{metric} ({mode})"},
        params={"num_samples": args.num_samples, "folds": ",".join(map(str, data.folds)),
                "workers_per_fold": args.workers_per_fold, "seed": args.seed,
                "gpus_per_worker": args.gpus_per_worker, "base_config": space.base,
                **{f"fixed.{k}": v for k, v in space.fixed.items()}},
        files={str(space.path): "search_space"},
        texts={"search_space/base_config.yaml": space.base_config().to_yaml()}, resume=args.resume)
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, args.num_samples,
                  len(data.folds), args.max_concurrent, args.parallel_folds,
                  max_fold_slots=args.max_fold_slots, joined=args.address is not None)
    ctx = launch.sweep_context(args, where, data, space, experiment_id, parent_run_id, layout.parallel_folds,
                               metric=metric, mode=mode)
    print(f"\nSweep {where.name}: {args.num_samples} trials x {len(data.folds)} folds of {data.corpus}, "
          f"{layout.max_concurrent} trial(s) at once, {layout.parallel_folds} fold(s) per trial at once\n"
          f"  results: {where.tune_path}   MLflow: {where.tracking_uri} (experiment {args.experiment!r}, "
          f"run {parent_run_id})\n"
          f"  resume after an interruption: python orchestration/sweep.py --resume --name {where.name} "
          f"--storage-path {args.storage_path} ...(same options)\n", flush=True)
    results = build_tuner(args, where, space, ctx, layout.max_concurrent, layout.trial_resources).fit()
    summary = finish_sweep(results, ctx, time.monotonic() - started, layout.parallel_slots)
    print_summary(summary, ctx, args.experiment, where.tune_path)
    report_logging_gaps(ctx.tracking_uri, ctx.experiment_id, ctx.sweep_id)
    if summary.interrupted:
        return 130
    return 0 if summary.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
