"""What the user reads while a sweep runs: one short line per trial start, fold and end, and the names trials go
by (`t07 λ=0.27 τ=0.33 ω=0.11 d=16`) in the console and in MLflow.

Ray's own output (worker logs, Tune's status tables) goes to files unless `--verbose`; `quiet_ray` says so
before Ray starts; `progress.ProgressPrinter` (which imports Ray) is the Tune callback that prints the lines.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

# The searched settings by the paper's symbols (Eq. 6-9: lambda, tau; Eq. 3: omega's init), others by name.
SYMBOLS = {"cmdt_weight": "λ", "cmdt_temperature": "τ", "filter_init": "ω", "d_state": "d", "lr": "lr",
           "weight_decay": "wd", "dropout": "p", "d_model": "D", "n_layers": "L", "row": "row"}
_INDEX = re.compile(r"^[^_]+(?:_[^_]+)*?_[0-9a-f]{5,}_(\d+)_")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def trial_label(number: int | None, config: dict[str, Any]) -> str:
    """`t07 λ=0.27 τ=0.33 ω=0.11 d=16`: the trial's number and its sampled values by their symbols."""
    values = " ".join(f"{SYMBOLS.get(k, k)}={format_value(v)}" for k, v in config.items())
    return (f"t{number:02d} " if number is not None else "") + values


def trial_number(trial_dir_name: str) -> int | None:
    """Tune's 1-based trial index from a trial folder name (`run_trial_18b7ac78_7_cmdt_weight=...`)."""
    match = _INDEX.match(trial_dir_name)
    return int(match.group(1)) if match else None


class _NoTuneNoise(logging.Filter):
    """Drops what Tune logs about trials the sweep reports itself: `Trial task failed for trial ...`, whose
    traceback runs to ~45 lines of Ray's own frames, and its closing `Trials did not complete: [run_trial_f0449186]`,
    which names trials by Tune's ids (the progress line says the trial failed, and the summary and the trial's
    MLflow run give its error); and `Failed to fetch metrics` of trials interrupted before their first report, which
    have no results yet (the summary lists them with 0 folds). Other failures to read results stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("Trial task failed", "Trials did not complete")):
            return False
        if message.startswith("Failed to fetch metrics"):
            return not all("FileNotFoundError" in line for line in message.splitlines()[1:])
        return True


TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.execution.tune_controller", "ray.tune.analysis.experiment_analysis")


def quiet_ray(verbose: bool) -> None:
    """Before Ray starts: worker output stays in the session's log files, and Tune prints no status tables
    (the legacy reporter at verbose 0 is silent; the new one still prints its start-up box), nor the line saying
    it saved its state (the summary says where), nor what `_NoTuneNoise` drops, unless `verbose`."""
    if not verbose:
        os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)
        for name in TUNE_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _NoTuneNoise) for f in logger.filters):
                logger.addFilter(_NoTuneNoise())


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def ended(seconds: float, interrupted: bool, resumed: bool) -> str:
    """How a sweep or grid run ended, for its summary line: a resumed run's wall is its own part only."""
    verb = "interrupted after" if interrupted else "finished in"
    if resumed:
        verb = f"resumed, {'interrupted' if interrupted else 'finished'} after another"
    return f"{verb} {seconds:.0f} s"


def wall_metric(resumed: bool) -> str:
    """The parent run's metric for this run's wall time: a resumed run logs its own part beside the first's."""
    return "resumed_wall_seconds" if resumed else "wall_seconds"


def worker_logs_dir() -> str:
    """Where this Ray session keeps the workers' stdout/stderr (worker-*.out/.err) on the driver's node."""
    try:
        import ray._private.worker as ray_worker

        return ray_worker._global_node.get_logs_dir_path()
    except Exception:  # a Ray without that private attribute: its documented default
        return "/tmp/ray/session_latest/logs"


def announce_worker_logs() -> None:
    """Once Ray is up, without --verbose: where the fold training output goes instead of this console."""
    print(f"Ray worker logs (fold training output): {worker_logs_dir()}/worker-*.out (--verbose shows them here)",
          flush=True)
