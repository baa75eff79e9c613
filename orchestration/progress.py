"""The Tune callback that prints the sweep's progress lines on the driver (see console.py for the names)."""

from __future__ import annotations

import math
import os
import time

from ray.tune import Callback

from orchestration.console import duration, trial_label, trial_number


class ProgressPrinter(Callback):
    """Prints `t03 fold 2/3  ua mean 0.401 ± 0.020 | best 0.420 (t01) | 5/12 folds, ≤3m00s left` per finished
    fold, and a line when a trial starts, ends, is pruned or fails."""

    def __init__(self, metric: str, mode: str, n_folds: int, n_trials: int) -> None:
        self.metric, self.mode, self.n_folds, self.n_trials = metric, mode, n_folds, n_trials
        self.started = time.monotonic()
        self.labels: dict[str, str] = {}
        self.folds_done: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self.short = metric.removeprefix("valid_").removesuffix("_mean")

    def label(self, trial) -> str:
        if trial.trial_id not in self.labels:
            number = trial_number(os.path.basename(str(getattr(trial, "path", "") or "")))
            self.labels[trial.trial_id] = trial_label(number or len(self.labels) + 1, dict(trial.config or {}))
        return self.labels[trial.trial_id]

    def _tag(self, trial) -> str:
        return self.label(trial).split(" ")[0]

    def _eta(self) -> str:
        done, total = sum(self.folds_done.values()), self.n_folds * self.n_trials
        if not done:
            return f"{done}/{total} folds"
        left = (time.monotonic() - self.started) / done * (total - done)
        return f"{done}/{total} folds, ≤{duration(left)} left"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        print(f"{self.label(trial)}  started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        done = int(result.get("folds_done", 0))
        self.folds_done[trial.trial_id] = done
        mean, std = result.get(self.metric), result.get(self.metric.replace("_mean", "_std"))
        if mean is None or math.isnan(float(mean)):
            return
        if done >= self.n_folds and (self.best is None or (mean > self.best[0] if self.mode == "max"
                                                           else mean < self.best[0])):
            self.best = (float(mean), self._tag(trial))
        best = f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "best: none finished yet"
        print(f"{self._tag(trial)} fold {done}/{self.n_folds}  {self.short} mean {mean:.3f} ± {std or 0.0:.3f}"
              f" | {best} | {self._eta()}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        done = self.folds_done.get(trial.trial_id, 0)
        word = "done" if done >= self.n_folds else f"pruned after {done}/{self.n_folds} folds"
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
