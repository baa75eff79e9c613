"""Tune's `OptunaSearch`, except that a trial the scheduler stopped before its last fold is told to Optuna as
PRUNED (Tune's own records it as COMPLETE with its partial mean, which TPE would then trust as final), and the
stored study names its objectives (optuna-dashboard labels them `valid_ua_mean`, not "Objective 0")."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class ProjectOptunaSearch(OptunaSearch):
    """`OptunaSearch` that tells Optuna PRUNED for a trial that reported fewer than `n_folds` folds."""

    def __init__(self, *args: Any, n_folds: int, time_attr: str, **kwargs: Any) -> None:
        self._n_folds = n_folds
        self._time_attr = time_attr
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        names = list(self._metric) if isinstance(self._metric, list) else [self._metric]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental in some Optuna releases
                self._ot_study.set_metric_names(names)
        except Exception as err:  # a label only: the study works without it
            logger.warning("Optuna: could not name the study's objectives %s: %s", names, err)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if (not error and result and trial_id not in self._completed_trials and trial_id in self._ot_trials
                and int(result.get(self._time_attr, 0)) < self._n_folds):
            trial = self._ot_trials[trial_id]
            try:  # the partial mean the scheduler judged (Tune skips on_trial_result for a stopping result)
                if isinstance(self.metric, str) and result.get(self.metric) is not None:
                    trial.report(float(result[self.metric]), int(result.get(self._time_attr, 0)))
                self._ot_study.tell(trial, None, state=TrialState.PRUNED)
            except Exception as err:  # a study whose trial is already finished: nothing to record
                logger.warning("Optuna: could not record trial %s as pruned: %s", trial_id, err)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
