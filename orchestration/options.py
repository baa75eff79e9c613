"""The command-line options the entry scripts share, and the checks of their values (done once, here).

`sweep.py` and `ablation.py` take the same data, resource and output options; each script adds its
own (the search space, the grid) and calls `check_common` after parsing.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from orchestration.preflight import DEFAULT_MIN_FREE_GB
from tfmamba.commands import refuse_empty_values

DEFAULT_STORAGE = "ray_results"
DEMO_FOLDS = "1,2,3"  # the demo cross-validates 3 of its 5 folds, to finish in minutes on 2 cores
# A killed or crashed Train worker (not a preemption: Ray retries those without limit) restarts its fold once
# from the last epoch checkpoint; a deterministic error such as a NaN loss then fails after one more try.
DEFAULT_FOLD_RETRIES = 1
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # --name: one plain folder name
MLFLOW_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
ADDRESS_HELP = ("Ray cluster to join: 'auto' (the cluster of this machine, as under `ray submit`) or HOST:PORT; "
                "default: start a private local Ray, whatever else runs on this machine")


def add_data_options(parser: argparse.ArgumentParser, manifest_default: str) -> argparse._ArgumentGroup:
    """--manifest, --cache and --folds."""
    data = parser.add_argument_group("data")
    data.add_argument("--manifest", help=f"prepared manifest folder (manifest.parquet + folds.json); {manifest_default}")
    data.add_argument("--cache", help="feature cache of that manifest (folder or s3://...)")
    data.add_argument("--folds", default=None,
                      help=f"folds to cross-validate: 'all' or a list like 1,2,3 (default: all; {DEMO_FOLDS} "
                           "for the demo corpus)")
    return data


def add_overrides_option(group: argparse._ArgumentGroup, unit: str) -> None:
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"fix a training setting for every {unit}, e.g. --set epochs=10 (repeatable)")


def add_resource_options(parser: argparse.ArgumentParser, unit: str) -> argparse._ArgumentGroup:
    """The Ray resource options; `unit` is what runs folds (trial, row)."""
    resources = parser.add_argument_group("resources")
    resources.add_argument("--workers-per-fold", type=int, default=1, help="Ray Train workers per fold (default: 1)")
    resources.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: 1)")
    resources.add_argument("--gpus-per-worker", type=float, default=0.0,
                           help="GPUs per worker (default: 0 = CPU; 1 on a GPU cluster)")
    resources.add_argument("--parallel-folds", type=int, default=None,
                           help=f"folds of one {unit} at once (default: what is left of the cluster per {unit})")
    resources.add_argument("--max-concurrent", type=int, default=None,
                           help=f"{unit}s at once (default: as many as the cluster fits)")
    resources.add_argument("--max-fold-slots", type=int, default=None,
                           help="folds the cluster can run at once at its largest (default: on a joined cluster, "
                                "what its launcher config ~/ray_bootstrap_config.yaml allows, else what is there "
                                "at start); folds beyond what is present wait as demand for the autoscaler")
    resources.add_argument("--address", default=None, help=ADDRESS_HELP)
    resources.add_argument("--fold-retries", type=int, default=DEFAULT_FOLD_RETRIES,
                           help="restarts of a fold whose Train worker died or failed, from its last epoch checkpoint "
                                f"(default: {DEFAULT_FOLD_RETRIES}; -1: no limit; a trial's lane, which trains several of its "
                                "folds, may spend them on any of those; node preemptions are retried without limit)")
    return resources


def add_output_options(parser: argparse.ArgumentParser, run: str, name_default: str,
                       experiment: str) -> argparse._ArgumentGroup:
    """Where Tune state and MLflow runs go."""
    where = parser.add_argument_group("where results go")
    where.add_argument("--storage-path", default=DEFAULT_STORAGE,
                       help=f"Tune/Train results, local folder or s3://... (default: ./{DEFAULT_STORAGE})")
    where.add_argument("--name", default=None, help=f"{run} name (default: {name_default})")
    where.add_argument("--mlflow-uri", default=None, help=MLFLOW_HELP)
    where.add_argument("--experiment", default=experiment, help=f"MLflow experiment (default: {experiment})")
    where.add_argument("--resume", action="store_true",
                       help=f"continue an interrupted {run} (Tuner.restore): --name's, else the newest {run} under "
                            "--storage-path")
    where.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB,
                       help="refuse to start unless every local results folder has this much free space, and "
                            "stop (resumably, as Ctrl-C does) when one falls under half of it "
                            f"(default: {DEFAULT_MIN_FREE_GB:g}; 0: no check)")
    return where


def add_verbose_option(parser: argparse.ArgumentParser, unit: str) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"show Ray's worker logs and Tune's status tables here (default: one line per {unit} "
                             "event; the worker logs stay in Ray's session folder, printed at the start)")


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Value checks of the shared options: counts at least 1, retry counts -1 (no limit) or more, free space 0 (no
    check) or more, an MLflow experiment with a name, a run name that is one plain folder name, no option given an
    empty value."""
    for name in ("workers_per_fold", "max_concurrent", "parallel_folds", "max_fold_slots"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("fold_retries", "trial_retries"):
        if getattr(args, name, 0) < -1:
            parser.error(f"--{name.replace('_', '-')} must be -1 (no limit), 0 or more")
    if not getattr(args, "min_free_gb", 0) >= 0:  # NaN too
        parser.error("--min-free-gb must be 0 (no check) or more")
    if not getattr(args, "experiment", "x").strip():
        parser.error("--experiment must name an MLflow experiment (it is empty)")
    name = getattr(args, "name", None)
    if name is not None and not RUN_NAME.match(name):
        parser.error(f"--name {name!r}: use letters, digits, '.', '_' or '-', beginning with a letter or digit (at "
                     "most 100 characters): it names folders, the MLflow run, the Optuna study and the printed "
                     "--resume command")
    refuse_empty_values(parser, args)


def parse_folds(text: str | None, demo: bool) -> list[int] | None:
    """`--folds`: None for all folds, else the fold numbers (the demo defaults to its first three). A value that
    names no fold (`--folds "$FOLDS"` with FOLDS unset) is an error, not a silent default."""
    text = (DEMO_FOLDS if demo else "all") if text is None else text
    if text.strip().lower() == "all":
        return None
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--folds {text!r}: give 'all' or fold numbers like 1,2,3") from None
    if not folds:
        raise SystemExit(f"--folds {text!r} names no fold (an unset shell variable?): give 'all' or fold numbers "
                         "like 1,2,3")
    twice = sorted({fold for fold in folds if folds.count(fold) > 1})
    if twice:  # a trial would wait for good for the second run of a fold it has already finished
        raise SystemExit(f"--folds {text!r}: fold {', '.join(map(str, twice))} listed twice; each fold runs once "
                         "(ablation.py --seeds repeats them)")
    return folds


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as a dict, or exit with the bad item named."""
    from tfmamba.config import parse_overrides as parse_config_overrides
    from tfmamba.errors import ConfigError

    try:
        return parse_config_overrides(items)
    except ConfigError as err:
        raise SystemExit(f"--set: {err}") from None
