"""Sweep TF-Mamba's hyper-parameters: Ray Tune + Optuna (TPE), each trial a k-fold cross-validation on
Ray Train, everything tracked in MLflow.

    python orchestration/sweep.py                      # the demo: demo corpus, local Ray, ./mlflow.db
    python orchestration/sweep.py --space default --manifest data/iemocap --cache data/iemocap/wavlm \\
        --num-samples 40 --gpus-per-worker 1 --storage-path s3://bucket/sweeps --address auto

The metric optimised is the mean validation UA over folds (`valid_ua_mean`); test metrics are
recorded for every fold and trial but never steer the search. ASHA stops trials whose running
mean over finished folds falls behind. MLflow gets one run per sweep, a nested run per trial
and a nested run per fold; the best trial's model is logged as a pyfunc model.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: import the installed `orchestration` package, not sibling files

import argparse
import logging
import os
import time

from orchestration import mlflow_runs
from orchestration.data import SweepData, resolve_data
from orchestration.fold_worker import RayReporter
from orchestration.preflight import DEFAULT_MIN_FREE_GB, PreflightError, check_outputs, mlflow_locations
from orchestration.resources import DRIVER_RESOURCE, plan
from orchestration.results import finish_sweep, print_summary
from orchestration.search_space import SearchSpace, SearchSpaceError, load_search_space
from orchestration.trial import METRIC, MODE, TIME_ATTR, SweepContext, run_trial

logger = logging.getLogger("orchestration.sweep")

DEFAULT_SPACE = "demo"
DEFAULT_STORAGE = "ray_results"
DEFAULT_EXPERIMENT = "tfmamba-sweeps"
# The demo sweep cross-validates 3 of the demo corpus's 5 folds by default, to finish in minutes on 2 cores.
DEMO_FOLDS = "1,2,3"
# A killed or crashed Train worker (not a preemption: Ray retries those without limit) restarts its fold once
# from the last epoch checkpoint; a deterministic error such as a NaN loss then fails after one more try.
DEFAULT_FOLD_RETRIES = 1


def add_resource_options(parser: argparse.ArgumentParser, unit: str) -> argparse._ArgumentGroup:
    """The Ray resources options a sweep and the ablation share; `unit` is what runs folds (trial, row)."""
    resources = parser.add_argument_group("resources")
    resources.add_argument("--workers-per-fold", type=int, default=1, help="Ray Train workers per fold (default: 1)")
    resources.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: 1)")
    resources.add_argument("--gpus-per-worker", type=float, default=0.0,
                           help="GPUs per worker (default: 0 = CPU; 1 on a GPU cluster)")
    resources.add_argument("--parallel-folds", type=int, default=None,
                           help=f"folds of one {unit} at once (default: what is left of the cluster per {unit})")
    resources.add_argument("--address", default=None,
                           help="Ray cluster to join ('auto' under `ray submit`); default: start a local Ray")
    resources.add_argument("--fold-retries", type=int, default=DEFAULT_FOLD_RETRIES,
                           help="restarts of a fold whose Train worker died or failed, from its last epoch checkpoint "
                                f"(default: {DEFAULT_FOLD_RETRIES}; node preemptions are retried without limit)")
    return resources


def add_output_options(parser: argparse.ArgumentParser, run: str, name_default: str,
                       experiment: str) -> argparse._ArgumentGroup:
    """Where Tune state and MLflow runs go: shared by the sweep and the ablation."""
    where = parser.add_argument_group("where results go")
    where.add_argument("--storage-path", default=DEFAULT_STORAGE,
                       help=f"Tune/Train results, local folder or s3://... (default: ./{DEFAULT_STORAGE})")
    where.add_argument("--name", default=None, help=f"{run} name (default: {name_default})")
    where.add_argument("--mlflow-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    where.add_argument("--experiment", default=experiment, help=f"MLflow experiment (default: {experiment})")
    where.add_argument("--resume", action="store_true", help=f"continue an interrupted {run} (Tuner.restore)")
    where.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB,
                       help="refuse to start unless every local results folder has this much free space "
                            f"(default: {DEFAULT_MIN_FREE_GB:g})")
    return where


def check_retries(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Retry counts are -1 (no limit), 0 or more."""
    for name in names:
        if getattr(args, name) < -1:
            parser.error(f"--{name.replace('_', '-')} must be -1 (no limit), 0 or more")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""With no --manifest/--cache the built-in demo corpus is prepared under ./data/demo (once).
MLflow: --mlflow-uri, else $MLFLOW_TRACKING_URI (the cluster config sets it to the head's MLflow
server), else sqlite:///./mlflow.db with artifacts in ./mlartifacts. Browse the results with the
`mlflow ui ...` command printed at the end.
Resume an interrupted sweep: the same command plus --resume (and its --name; the newest sweep
under --storage-path is taken otherwise). Finished trials are not rerun.""",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", help="prepared manifest folder (manifest.parquet + folds.json); default: demo")
    data.add_argument("--cache", help="feature cache of that manifest (folder or s3://...); default: demo")
    data.add_argument("--folds", default=None,
                      help=f"folds to cross-validate: 'all' or a list like 1,2,3 (default: all; {DEMO_FOLDS} "
                           "for the demo corpus)")
    search = parser.add_argument_group("search")
    search.add_argument("--space", default=DEFAULT_SPACE,
                        help="search space: a name in search_spaces/ (default, demo) or a YAML path "
                             f"(default: {DEFAULT_SPACE})")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a training setting for every trial, e.g. --set epochs=10 (repeatable)")
    search.add_argument("--num-samples", type=int, default=4, help="trials to run (default: 4)")
    search.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as many as the cluster fits, at most --num-samples)")
    search.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    resources = add_resource_options(parser, unit="trial")
    resources.add_argument("--trial-retries", type=int, default=0,
                           help="Tune retries of a failed trial; finished folds are kept (default: 0)")
    add_output_options(parser, run="sweep", name_default="<space>-<date>-<time>", experiment=DEFAULT_EXPERIMENT)
    args = parser.parse_args(argv)
    for name in ("num_samples", "workers_per_fold"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    check_retries(parser, args, "fold_retries", "trial_retries")
    return args


def parse_folds(text: str | None, demo: bool) -> list[int] | None:
    text = text or (DEMO_FOLDS if demo else "all")
    if text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--folds {text!r}: give 'all' or fold numbers like 1,2,3") from None


def storage_root(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def sweep_name(args: argparse.Namespace, space: SearchSpace, storage: str) -> str:
    """--name, the newest sweep under the storage path for --resume, or a new dated name."""
    if args.name:
        return args.name
    if args.resume:
        if "://" in storage:
            raise SystemExit("--resume with a remote --storage-path needs --name")
        sweeps = sorted(Path(storage).glob("*/tuner.pkl"), key=lambda p: p.stat().st_mtime)
        if not sweeps:
            raise SystemExit(f"--resume: no sweep under {storage}")
        return sweeps[-1].parent.name
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_ray(address: str | None, tracking_uri: str) -> None:
    import ray

    env = {mlflow_runs.ENV_URI: tracking_uri, "PYTHONUNBUFFERED": "1", **mlflow_runs.http_env(),
           mlflow_runs.ENV_RETRY_SECONDS: str(mlflow_runs.default_retry_seconds())}
    runtime_env = {"env_vars": env}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=os.cpu_count(), resources={DRIVER_RESOURCE: 1000}, include_dashboard=False,
                 runtime_env=runtime_env)
    logger.info("Ray cluster resources: %s", ray.cluster_resources())


def git_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def open_parent_run(args: argparse.Namespace, name: str, space: SearchSpace, data: SweepData, uri: str,
                    experiment_id: str, storage: str) -> str:
    """Get or create the sweep's MLflow run with its tags, params and the search space file."""
    run_id = mlflow_runs.get_or_create_run(uri, experiment_id, mlflow_runs.sweep_tags(name), name)
    tags = {"git_commit": git_commit(), "corpus": data.corpus, "manifest": data.manifest_dir, "cache": data.cache,
            "search_space": space.name, "storage_path": f"{storage}/{name}", "metric": f"{METRIC} ({MODE})"}
    tags |= {f"cache.{key}": value for key, value in data.cache_metadata.items()}
    mlflow_runs.set_tags(uri, run_id, tags)
    client = mlflow_runs.client(uri)
    if client.get_run(run_id).data.params:
        return run_id  # resumed: the options that shape the sweep were logged by its first start
    mlflow_runs.log_params(uri, run_id, {"num_samples": args.num_samples, "folds": ",".join(map(str, data.folds)),
                                         "workers_per_fold": args.workers_per_fold, "seed": args.seed,
                                         "gpus_per_worker": args.gpus_per_worker, "base_config": space.base,
                                         **{f"fixed.{k}": v for k, v in space.fixed.items()}})
    client.log_artifact(run_id, str(space.path), artifact_path="search_space")
    client.log_text(run_id, space.base_config().to_yaml(), "search_space/base_config.yaml")
    return run_id


def build_tuner(args: argparse.Namespace, name: str, storage: str, space: SearchSpace, ctx: SweepContext,
                max_concurrent: int, trial_resources: dict[str, float]):
    """A new Tuner, or the restored one with --resume."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources)
    path = f"{storage}/{name}"
    if args.resume:
        return restore_tuner(path, trainable, "sweep")
    if "://" not in storage and Path(path).exists():
        raise SystemExit(f"{path} already exists: add --resume to continue that sweep, or pick another --name")
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
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                                    num_samples=args.num_samples, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=args.trial_retries)),
    )


def restore_tuner(path: str, trainable, what: str):
    """The Tuner saved at `path`, to go on with its unfinished and errored trials (finished ones stay)."""
    from ray import tune

    if not tune.Tuner.can_restore(path):
        raise SystemExit(f"--resume: no restorable {what} at {path}")
    logger.info("resuming %s from %s", what, path)
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)


def output_root(storage: str, name: str) -> str:
    """Where the folds' output folders go: beside the Tune results, or under /tmp for remote storage."""
    return f"{storage}/{name}-outputs" if "://" not in storage else f"/tmp/tfmamba-sweeps/{name}-outputs"


def preflight(args: argparse.Namespace, storage: str, out_root: str, uri: str) -> None:
    """Exit with every unwritable or full results location named, before anything starts."""
    where = {"Tune/Train storage": storage, "fold outputs": out_root} | mlflow_locations(uri, args.experiment)
    try:
        check_outputs(where, args.min_free_gb)
    except PreflightError as err:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {err}") from None


def report_mlflow_gaps(ctx: SweepContext) -> None:
    """One line per fold whose epoch metrics reached MLflow late (the server was unreachable for a while)."""
    try:
        folds = mlflow_runs.find_runs(ctx.tracking_uri, ctx.experiment_id,
                                      {"sweep_id": ctx.sweep_id, "run_kind": mlflow_runs.FOLD}, retry_seconds=0)
    except Exception as err:
        print(f"MLflow: could not check for logging gaps ({str(err).splitlines()[0]})", flush=True)
        return
    for run in folds:
        tags = run.data.tags
        if tags.get(RayReporter.GAP_TAG):
            print(f"MLflow was unreachable for {tags.get('mlflow_gap_seconds', '?')} s during trial {tags['trial_id']} "
                  f"fold {tags['fold']}: epochs {tags[RayReporter.GAP_TAG]} were buffered and logged late", flush=True)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in mlflow_runs.http_env().items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    started = time.monotonic()
    try:
        space = load_search_space(args.space, parse_overrides(args.overrides))
    except SearchSpaceError as err:
        raise SystemExit(f"search space: {err}") from None
    logger.info("%s", space.summary())
    storage = storage_root(args.storage_path)
    name = sweep_name(args, space, storage)
    uri = mlflow_runs.resolve_tracking_uri(args.mlflow_uri)
    out_root = output_root(storage, name)
    preflight(args, storage, out_root, uri)
    data = resolve_data(args.manifest, args.cache, parse_folds(args.folds, demo=args.manifest is None))
    experiment_id = mlflow_runs.ensure_experiment(uri, args.experiment,
                                                  mlflow_runs.default_artifact_location(uri, args.experiment))
    parent_run_id = open_parent_run(args, name, space, data, uri, experiment_id, storage)
    if args.resume:
        mlflow_runs.mark_stale_runs(uri, experiment_id, name)
    start_ray(args.address, uri)
    layout = plan(args.workers_per_fold, args.cpus_per_worker, args.gpus_per_worker, args.num_samples,
                  len(data.folds), args.max_concurrent, args.parallel_folds)
    ctx = SweepContext(sweep_id=name, space=space, manifest_dir=data.manifest_dir, cache=data.cache, folds=data.folds,
                       out_root=out_root, train_storage=f"{storage}/{name}-train", tracking_uri=uri,
                       experiment_id=experiment_id, parent_run_id=parent_run_id,
                       workers_per_fold=args.workers_per_fold, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, parallel_folds=layout.parallel_folds,
                       fold_retries=args.fold_retries)
    print(f"\nSweep {name}: {args.num_samples} trials x {len(data.folds)} folds of {data.corpus}, "
          f"{layout.max_concurrent} trial(s) at once, {layout.parallel_folds} fold(s) per trial at once\n"
          f"  results: {storage}/{name}   MLflow: {uri} (experiment {args.experiment!r}, run {parent_run_id})\n"
          f"  resume after an interruption: python orchestration/sweep.py --resume --name {name} "
          f"--storage-path {args.storage_path} ...(same options)\n", flush=True)
    tuner = build_tuner(args, name, storage, space, ctx, layout.max_concurrent, layout.trial_resources)
    results = tuner.fit()
    summary = finish_sweep(results, ctx, time.monotonic() - started, layout.parallel_slots)
    print_summary(summary, ctx, args.experiment, f"{storage}/{name}")
    report_mlflow_gaps(ctx)
    if summary.interrupted:
        return 130
    return 0 if summary.best is not None else 1


def parse_overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` items as a dict, or exit with the bad item named."""
    from tfmamba.config import parse_overrides as parse_config_overrides
    from tfmamba.errors import ConfigError

    try:
        return parse_config_overrides(items)
    except ConfigError as err:
        raise SystemExit(f"--set: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
