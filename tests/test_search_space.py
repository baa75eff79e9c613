"""Search-space files: the shipped spaces load, and bad files fail with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration.search_space import SearchSpaceError, load_search_space


def write_space(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def base_space(**changes) -> dict:
    data = {
        "base": "demo",
        "params": {
            "cmdt_weight": {"distribution": "uniform", "low": 0.0, "high": 0.5},
            "d_state": {"distribution": "choice", "values": [16, 32]},
        },
        "points_to_evaluate": ["base"],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("name", ["default", "demo"])
def test_shipped_spaces_load_and_start_from_the_paper_setting(name: str) -> None:
    space = load_search_space(name)
    assert {"cmdt_weight", "cmdt_temperature", "filter_init", "d_state"} <= set(space.params)
    first = space.points_to_evaluate[0]
    assert (first["cmdt_weight"], first["cmdt_temperature"], first["filter_init"]) == (0.1, 0.1, 0.05)
    assert 16 in space.params["d_state"].values
    assert set(space.param_space()) == set(space.params)
    assert space.trial_config(first).cmdt_weight == 0.1


def test_default_space_first_point_is_the_paper_config() -> None:
    space = load_search_space("default")
    assert space.points_to_evaluate[0] == {"cmdt_weight": 0.1, "cmdt_temperature": 0.1, "filter_init": 0.05,
                                           "d_state": 128, "lr": 5e-4}
    assert space.trial_config(space.points_to_evaluate[0]).checkpoint_seconds == 60


def test_trial_config_applies_sampled_values(tmp_path: Path) -> None:
    space = load_search_space(write_space(tmp_path, base_space(fixed={"epochs": 2})))
    config = space.trial_config({"cmdt_weight": 0.3, "d_state": 32})
    assert (config.cmdt_weight, config.model.d_state, config.epochs) == (0.3, 32, 2)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"params": {"cmdt_wieght": {"distribution": "uniform", "low": 0, "high": 1}}}, "unknown parameter 'cmdt_wieght'"),
        ({"params": {"lr": {"distribution": "loguniform", "low": 1e-2, "high": 1e-3}}}, "low (0.01) must be below high"),
        ({"params": {"lr": {"distribution": "gaussian", "low": 0, "high": 1}}}, "unknown distribution 'gaussian'"),
        ({"params": {"lr": {"distribution": "loguniform", "low": 0, "high": 1}}}, "loguniform needs low > 0"),
        ({"params": {"d_state": {"distribution": "choice", "values": []}}}, "non-empty 'values'"),
        ({"params": {"cmdt_temperature": {"distribution": "uniform", "low": -1, "high": 1}}}, "not a valid setting"),
        ({"params": {"lr": {"distribution": "uniform", "low": "a", "high": 1}}}, "'low' must be a finite number"),
        ({"params": {}}, "at least one parameter"),
        ({"fixed": {"epoch": 3}}, "unknown setting"),
        ({"points_to_evaluate": [{"cmdt_weight": 0.9, "d_state": 16}]}, "cmdt_weight=0.9 is outside"),
        ({"points_to_evaluate": [{"cmdt_weight": 0.1}]}, "missing ['d_state']"),
        ({"points_to_evaluate": ["paper"]}, "d_state=128 is outside"),
        ({"params": {"d_model": {"distribution": "choice", "values": [32, 256]},
                     "headdim": {"distribution": "choice", "values": [64, 128]}},
          "points_to_evaluate": [{"d_model": 32, "headdim": 128}]},
         "{'d_model': 32, 'headdim': 128} is not a valid setting together (expand * d_model (64) must be a multiple"),
        ({"early_stopping": {"grace_period": 0}}, "grace_period >= 1"),
        ({"sampler": "tpe"}, "unknown key(s) ['sampler']"),
    ],
)
def test_bad_spaces_are_rejected_with_the_reason(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_space(tmp_path, base_space(**changes))
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_space_lists_the_shipped_ones() -> None:
    with pytest.raises(SearchSpaceError, match="one of: .*default"):
        load_search_space("no-such-space")


def test_a_folder_named_like_a_space_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "demo").mkdir()  # e.g. a demo data folder in the working directory
    monkeypatch.chdir(tmp_path)
    assert load_search_space("demo").path.name == "demo.yaml"
    with pytest.raises(SearchSpaceError, match="not found"):
        load_search_space(str(tmp_path))
