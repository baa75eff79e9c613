"""--objectives: parsing, the Pareto front, and the costs measured on a real model."""

from __future__ import annotations

import pytest

from orchestration.pareto import ObjectiveError, dominates, front, measure_costs, parse_objectives


def test_objectives_are_parsed_and_bad_ones_named() -> None:
    assert parse_objectives("valid_ua_mean:max, params:min") == [("valid_ua_mean", "max"), ("params", "min")]
    assert parse_objectives("valid_wf1_mean:max,latency_ms:min")[1] == ("latency_ms", "min")
    for bad, message in (("test_ua_mean:max", "unknown metric 'test_ua_mean'"), ("valid_ua_mean", "needs a direction"),
                         ("valid_ua_mean:up", "needs a direction"), ("params:min", "add a validation metric"),
                         ("valid_ua_mean:max,valid_ua_mean:min", "named twice"), ("", "at least one")):
        with pytest.raises(ObjectiveError, match=message):
            parse_objectives(bad)


def test_the_front_keeps_the_trials_nothing_beats_on_every_objective() -> None:
    objectives = [("valid_ua_mean", "max"), ("params", "min")]
    points = {"big-good": {"valid_ua_mean": 0.60, "params": 900.0},
              "small-ok": {"valid_ua_mean": 0.55, "params": 300.0},
              "big-worse": {"valid_ua_mean": 0.50, "params": 950.0},  # beaten by big-good on both
              "tiny-bad": {"valid_ua_mean": 0.40, "params": 100.0},
              "same-as-small": {"valid_ua_mean": 0.55, "params": 300.0},  # ties dominate nothing
              "unfinished": {"params": 10.0}}
    assert front(points, objectives) == ["big-good", "small-ok", "same-as-small", "tiny-bad"]
    assert dominates(points["big-good"], points["big-worse"], objectives)
    assert not dominates(points["small-ok"], points["same-as-small"], objectives)


def test_costs_come_from_the_trial_model() -> None:
    from tfmamba.config import TrainConfig

    small = TrainConfig.from_dict({"d_model": 16, "headdim": 8, "num_heads": 2, "ffn_dim": 32,
                                   "classifier_dims": [16]}).to_dict()
    larger = {**small, "d_model": 32, "headdim": 16}
    costs = measure_costs(small, 4, 80, ["params", "latency_ms"])
    assert costs["params"] > 0 and costs["latency_ms"] > 0
    assert measure_costs(larger, 4, 80, ["params"])["params"] > costs["params"]
    assert set(measure_costs(small, 4, 80, ["params"])) == {"params"}
