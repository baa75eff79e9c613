"""Training configuration: one flat, validated dataclass loaded from YAML (see docs/contracts.md).

Shipped configs live in `tfmamba/data/configs/` (`paper`, `demo`); `load_train_config` accepts one
of those names or a YAML path, plus `key=value` overrides (values parsed as YAML, so `lr=1e-3`,
`max_frames=null` and `classifier_dims=[128,64]` work). Every value is checked on construction,
so a bad setting fails before any data is read, with a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tfmamba.corpora import selection_metric
from tfmamba.errors import ConfigError
from tfmamba.model import VARIANTS, ModelConfig
from tfmamba.ssd import BACKENDS

SHIPPED_CONFIGS: tuple[str, ...] = ("paper", "demo")
SCHEDULERS: tuple[str, ...] = ("cosine", "constant")
INPUT_NORMS: tuple[str, ...] = ("none", "global")
# Selection metrics and whether larger is better; "auto" is the corpus's own (tfmamba.corpora.SELECTION_METRICS).
SELECT_METRICS: dict[str, bool] = {"valid_ua": True, "valid_wa": True, "valid_wf1": True, "valid_loss": False}
AUTO = "auto"
MODEL_FIELDS: tuple[str, ...] = ("variant", "d_model", "d_state", "d_conv", "expand", "headdim", "ngroups",
                                 "chunk_size", "num_heads", "ffn_dim", "classifier_dims", "dropout", "filter_init",
                                 "filter_sharpness", "filter_hidden", "freq_conv", "ssd_backend")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one fold's training depends on; defaults are the paper's setting (full-size model).

    `max_frames` crops training clips (a random window); validation and test clips are scored whole
    unless longer than `eval_max_frames` (None: no limit), a memory cap for extreme clips.
    `select_metric="auto"` picks the best epoch on the corpus's metric (`tfmamba.corpora.selection_metric`:
    validation WF1 on MELD, UA elsewhere).

    `input_norm="global"` standardises each feature dimension with the training split's mean and
    standard deviation (for un-normalised features such as raw log-mels); the statistics are
    folded into the model's input projection when the weights are saved, so a trained model
    takes raw features.
    """

    # model
    variant: str = "tf_cmdt"
    d_model: int = 1024
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 64
    num_heads: int = 8
    ffn_dim: int = 192
    classifier_dims: tuple[int, ...] = (512, 256)
    dropout: float = 0.1
    filter_init: float = 0.05
    filter_sharpness: float = 4.0
    filter_hidden: int = 4
    freq_conv: bool = False
    ssd_backend: str = "auto"
    # loss
    cmdt_weight: float = 0.1
    cmdt_temperature: float = 0.1
    cmdt_bins: int = 16
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 30
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    patience: int = 8
    select_metric: str = AUTO
    seed: int = 0
    max_frames: int | None = 600
    eval_max_frames: int | None = None
    amp: bool = True
    num_workers: int = 0
    input_norm: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classifier_dims", _int_tuple(self.classifier_dims))
        for f in fields(self):  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = getattr(self, f.name)
            if f.type.startswith("float") and isinstance(value, str):
                object.__setattr__(self, f.name, _float(f.name, value))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _choice("variant", self.variant, VARIANTS)
        _choice("ssd_backend", self.ssd_backend, BACKENDS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("select_metric", self.select_metric, (AUTO, *SELECT_METRICS))
        _choice("input_norm", self.input_norm, INPUT_NORMS)
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "num_heads",
                     "ffn_dim", "cmdt_bins", "batch_size", "epochs"):
            _at_least(name, getattr(self, name), 1)
        for name in ("patience", "num_workers", "seed", "filter_hidden"):
            _at_least(name, getattr(self, name), 0)
        if not self.classifier_dims or min(self.classifier_dims) < 1:
            raise ConfigError(f"classifier_dims must be positive widths, got {list(self.classifier_dims)}")
        _in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _positive("filter_init", self.filter_init)
        _positive("filter_sharpness", self.filter_sharpness)
        _positive("cmdt_temperature", self.cmdt_temperature)
        _positive("lr", self.lr)
        _in_range("cmdt_weight", self.cmdt_weight, 0.0, math.inf)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _in_range("warmup_epochs", self.warmup_epochs, 0.0, math.inf)
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.max_frames is not None:
            _at_least("max_frames", self.max_frames, 1)
        if self.eval_max_frames is not None:
            _at_least("eval_max_frames", self.eval_max_frames, 1)
        self.model_config(num_classes=2, input_dim=1)  # the model's own cross-field checks

    def selection(self, corpus: str) -> tuple[str, bool]:
        """The validation metric that picks the best epoch on `corpus` ("auto": the corpus's own), and whether
        higher is better."""
        metric = selection_metric(corpus) if self.select_metric == AUTO else self.select_metric
        return metric, SELECT_METRICS[metric]

    def model_config(self, num_classes: int, input_dim: int) -> ModelConfig:
        """The network these settings describe, for `num_classes` classes and `input_dim` features."""
        settings = {name: getattr(self, name) for name in MODEL_FIELDS}
        return ModelConfig(num_classes=num_classes, input_dim=input_dim, **settings)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values (tuples as lists)."""
        data = dataclasses.asdict(self)
        data["classifier_dims"] = list(self.classifier_dims)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A validated copy with `overrides` applied (unknown keys raise ConfigError)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a mapping of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as err:  # e.g. classifier_dims that is not a list
            raise ConfigError(str(err)) from err

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        try:
            return cls.from_dict(data or {})
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["lr=1e-3", "max_frames=null"]` -> `{"lr": 0.001, "max_frames": None}` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return out


def load_train_config(name_or_path: str | Path, overrides: Mapping[str, Any] | Iterable[str] | None = None
                      ) -> TrainConfig:
    """A shipped config by name ("paper", "demo") or a YAML file, with optional overrides
    (a mapping, or `key=value` strings)."""
    if str(name_or_path) in SHIPPED_CONFIGS:
        resource = resources.files("tfmamba").joinpath(f"data/configs/{name_or_path}.yaml")
        with resources.as_file(resource) as path:
            config = TrainConfig.from_yaml(path)
    elif Path(name_or_path).exists():
        config = TrainConfig.from_yaml(name_or_path)
    else:
        raise ConfigError(f"no config {str(name_or_path)!r}: give a YAML path or one of {', '.join(SHIPPED_CONFIGS)}")
    if overrides:
        extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        config = config.replace(**extra)
    return config


def _int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"classifier_dims must be a list of widths, got {value!r}")
    items = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ConfigError(f"classifier_dims must be a list of integers, got {list(items)}")
    return items


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Check a value against its field annotation (a string, as `from __future__ import annotations` makes it)."""
    optional = "None" in annotation
    if value is None:
        if not optional:
            raise ConfigError(f"{name} must not be null")
        return
    base = annotation.replace(" | None", "")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }.get(base, True)
    if not ok:
        raise ConfigError(f"{name} must be {base}, got {value!r}")
    if base == "float" and math.isnan(value):
        raise ConfigError(f"{name} must be a number, got nan")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")


def _in_range(name: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    above = value < high if high_open else value <= high
    if not (math.isfinite(value) and low <= value and above):
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in [{low}, {high}{bracket}, got {value}")
