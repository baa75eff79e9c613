"""TrainConfig: shipped configs, YAML loading, overrides and the ConfigError for each bad value."""

from __future__ import annotations

import pytest

from tfmamba.config import TrainConfig, load_train_config, parse_overrides
from tfmamba.errors import ConfigError


def test_paper_config_is_the_default_and_the_papers_setting():
    paper = load_train_config("paper")
    assert paper == TrainConfig()
    assert (paper.model.d_model, paper.lr, paper.batch_size, paper.cmdt_weight) == (1024, 5e-4, 32, 0.1)


def test_the_selection_metric_is_the_corpus_own_unless_set():
    from tfmamba.corpora import selection_metric

    paper = load_train_config("paper")
    assert paper.select_metric == "auto" and paper.eval_max_frames is None and paper.model.freq_conv is False
    assert paper.selection("meld") == ("valid_wf1", True) and selection_metric("MELD") == "valid_wf1"
    assert paper.selection("iemocap") == paper.selection("demo") == ("valid_ua", True)
    assert paper.replace(select_metric="valid_loss").selection("meld") == ("valid_loss", False)


def test_demo_config_builds_a_small_model():
    demo = load_train_config("demo")
    model = demo.model_config(num_classes=4, input_dim=80)
    assert model.d_model < 256 and model.input_dim == 80 and model.num_classes == 4
    assert demo.input_norm == "global"


def test_yaml_file_and_overrides_round_trip(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(load_train_config("demo").replace(epochs=3).to_yaml(), encoding="utf-8")
    config = load_train_config(path, ["lr=2e-3", "max_frames=null", "classifier_dims=[32, 16]", "amp=false"])
    assert config.epochs == 3 and config.lr == 2e-3 and config.max_frames is None
    assert config.model.classifier_dims == (32, 16) and config.amp is False
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"d_state": 0}, "d_state"),
        ({"cmdt_temperature": -0.1}, "cmdt_temperature"),
        ({"lr": 0.0}, "lr"),
        ({"dropout": 1.0}, "dropout"),
        ({"cmdt_weight": -1}, "cmdt_weight"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_frames": 0}, "max_frames"),
        ({"eval_max_frames": 0}, "eval_max_frames"),
        ({"filter_hidden": -1}, "filter_hidden"),
        ({"freq_conv": "no"}, "freq_conv"),
        ({"variant": "transformer"}, "variant"),
        ({"scheduler": "step"}, "scheduler"),
        ({"select_metric": "test_ua"}, "select_metric"),
        ({"amp": "yes"}, "amp"),
        ({"epochs": 2.5}, "epochs"),
        ({"lr": "fast"}, "lr"),
        ({"classifier_dims": [0]}, "classifier_dims"),
        ({"headdim": 48}, "headdim"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"cuda_graphs": True}, "cuda_graphs needs compile"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig().replace(**overrides)


def test_bad_files_and_names(tmp_path):
    with pytest.raises(ConfigError, match="no config"):
        load_train_config("nonexistent")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(bad)
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_settings_stay_flat_while_the_model_is_one_model_config():
    from tfmamba.config import SETTINGS
    from tfmamba.model import ModelConfig

    config = TrainConfig().replace(d_state=64, lr=1e-3)
    assert isinstance(config.model, ModelConfig) and config.model.d_state == 64 and config.lr == 1e-3
    flat = config.to_dict()
    assert tuple(flat) == SETTINGS and "model" not in flat and flat["d_state"] == 64
    assert list(flat)[:3] == ["variant", "d_model", "d_state"] and list(flat)[-1] == "input_norm"
    assert config.model_config(num_classes=7, input_dim=80) == ModelConfig(**{**config.model.to_dict(),
                                                                              "num_classes": 7, "input_dim": 80})
    for data_size in ("num_classes", "input_dim", "model"):  # set from the data, not by a training config
        with pytest.raises(ConfigError, match="unknown setting"):
            TrainConfig().replace(**{data_size: 5})
