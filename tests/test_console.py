"""The sweep's quiet console: what Tune logs about trials the sweep reports itself is dropped, nothing else."""

from __future__ import annotations

import logging

import pytest

from orchestration.console import quiet_ray


def test_a_quiet_console_drops_tunes_noise_about_trials_it_reports_itself(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Seen on a sweep interrupted before its trials' first reports: Tune warned `Failed to fetch metrics for 2
    trial(s)` with a FileNotFoundError line each, above the summary that lists those trials with 0 folds."""
    for key in ("RAY_LOG_TO_DRIVER", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.setenv(key, "0")
    quiet_ray(verbose=False)
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    with caplog.at_level(logging.WARNING):
        analysis.warning("Failed to fetch metrics for 2 trial(s):\n- run_trial_2eda47e9: FileNotFoundError('Could "
                         "not fetch metrics for run_trial_2eda47e9: both result.json and progress.csv were not found "
                         "at ...')\n- run_trial_ee668c96: FileNotFoundError('Could not fetch metrics ...')")
        analysis.warning("Failed to fetch metrics for 1 trial(s):\n- run_trial_5: JSONDecodeError('Expecting value')")
        logging.getLogger("ray.tune.tune").error("Trials did not complete: [run_trial_f0449186]")
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial run_trial_f04\n...")
        logging.getLogger("ray.tune.execution.tune_controller").warning("another warning")
    assert [record.getMessage().splitlines()[-1] for record in caplog.records] == [
        "- run_trial_5: JSONDecodeError('Expecting value')", "another warning"]
