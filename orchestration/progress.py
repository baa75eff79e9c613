"""The Tune callback that prints the sweep's progress lines on the driver (see console.py for the names)."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

from ray.tune import Callback

from orchestration.console import duration, trial_label, trial_number

Label = Callable[[int, dict[str, Any]], str]  # (Tune's trial number, its config) -> `t03 λ=0.27 ...`


class ProgressPrinter(Callback):
    """Prints `t03 fold 2/3  ua mean 0.401 ± 0.020 | best 0.420 (t01) | 5/12 folds, ≤3m00s left` per finished
    fold, and a line when a trial starts, ends, is pruned or fails. `label` names a trial (its first word is the
    tag the other lines use; an ablation's is the row); with `seeds` (> 0) each fold runs once per seed and the
    lines count fold runs."""

    def __init__(self, metric: str, mode: str, n_folds: int, n_trials: int, label: Label = trial_label,
                 seeds: int = 0) -> None:
        self.metric, self.mode, self.n_trials, self.make_label = metric, mode, n_trials, label
        self.per_trial = n_folds * max(seeds, 1)  # what a trial finishes: its folds, or its fold runs
        self.done_key, self.unit = ("runs_done", "fold run") if seeds else ("folds_done", "fold")
        self.started = time.monotonic()
        self.labels: dict[str, str] = {}
        self.done: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self.short = metric.removeprefix("valid_").removesuffix("_mean")

    def label(self, trial) -> str:
        if trial.trial_id not in self.labels:
            number = trial_number(os.path.basename(str(getattr(trial, "path", "") or "")))
            self.labels[trial.trial_id] = self.make_label(number or len(self.labels) + 1, dict(trial.config or {}))
        return self.labels[trial.trial_id]

    def _tag(self, trial) -> str:
        return self.label(trial).split(" ")[0]

    def _eta(self) -> str:
        done, total = sum(self.done.values()), self.per_trial * self.n_trials
        if not done:
            return f"{done}/{total} {self.unit}s"
        left = (time.monotonic() - self.started) / done * (total - done)
        return f"{done}/{total} {self.unit}s, ≤{duration(left)} left"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        print(f"{self.label(trial)}  started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        done = int(result.get(self.done_key, 0))
        self.done[trial.trial_id] = done
        mean, std = result.get(self.metric), result.get(self.metric.replace("_mean", "_std"))
        if mean is None or math.isnan(float(mean)):
            return
        if done >= self.per_trial and (self.best is None or (mean > self.best[0] if self.mode == "max"
                                                             else mean < self.best[0])):
            self.best = (float(mean), self._tag(trial))
        best = f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "best: none finished yet"
        print(f"{self._tag(trial)} {self.unit} {done}/{self.per_trial}  {self.short} mean {mean:.3f} ± "
              f"{std or 0.0:.3f} | {best} | {self._eta()}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        done = self.done.get(trial.trial_id, 0)
        word = "done" if done >= self.per_trial else f"pruned after {done}/{self.per_trial} {self.unit}s"
        print(f"{self._tag(trial)} {word}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"{self._tag(trial)} FAILED (the error is in the summary below and in MLflow)", flush=True)


class BestSoFar(Callback):
    """Logs the best finished trial's metrics so far on the sweep's MLflow run, stepped by the number of trials
    finished, so the sweep run charts the search's progress while it runs (same names as the trial runs')."""

    def __init__(self, uri: str, run_id: str, metric: str, mode: str, n_folds: int) -> None:
        self.uri, self.run_id, self.metric, self.mode, self.n_folds = uri, run_id, metric, mode, n_folds
        self.last: dict[str, dict] = {}
        self.finished = 0
        self.best: dict | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = dict(result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = self.last.get(trial.trial_id, {})
        self.finished += 1
        value = result.get(self.metric)
        if int(result.get("folds_done", 0)) >= self.n_folds and value is not None and (
                self.best is None or (value > self.best[self.metric] if self.mode == "max"
                                      else value < self.best[self.metric])):
            self.best = result
        metrics = {"trials_finished": self.finished}
        if self.best is not None:
            metrics |= {k: v for k, v in self.best.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and k.startswith(("valid_", "test_")) and k.endswith(("_mean", "_std"))}
        try:
            from orchestration import mlflow_runs

            mlflow_runs.log_metrics(self.uri, self.run_id, metrics, step=self.finished)
        except Exception as err:  # progress metrics are a convenience; the sweep goes on without them
            print(f"(could not log best-so-far metrics to MLflow: {err})", flush=True)
