"""Training configuration: a validated dataclass composing the model's `ModelConfig`, loaded from flat YAML
(see docs/contracts.md).

A config file, a `--set key=value` override and a search space name model settings (`d_state`) and
training settings (`lr`) side by side, at the top level: `TrainConfig.from_dict` sorts them into
`TrainConfig.model` (a `ModelConfig`, the one declaration of the model's settings) and the training
fields, and `to_dict` flattens them back. Shipped configs live in `tfmamba/data/configs/` (`paper`,
`demo`); `load_train_config` accepts one of those names or a YAML path, plus `key=value` overrides
(values parsed as YAML, so `lr=1e-3`, `max_frames=null` and `classifier_dims=[128,64]` work). Every
value is checked once, when the config is built, so a bad setting fails before any data is read,
with a `ConfigError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tfmamba import checks
from tfmamba.corpora import selection_metric
from tfmamba.errors import ConfigError
from tfmamba.model_config import DATA_SIZES, ModelConfig

SHIPPED_CONFIGS: tuple[str, ...] = ("paper", "demo")
SCHEDULERS: tuple[str, ...] = ("cosine", "constant")
INPUT_NORMS: tuple[str, ...] = ("none", "global")
# Selection metrics and whether larger is better; "auto" is the corpus's own (tfmamba.corpora.SELECTION_METRICS).
SELECT_METRICS: dict[str, bool] = {"valid_ua": True, "valid_wa": True, "valid_wf1": True, "valid_loss": False}
AUTO = "auto"
# The model settings a training config sets (the rest of ModelConfig comes from the data).
MODEL_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig) if f.name not in DATA_SIZES)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one fold's training depends on: the network (`model`) and how it is trained; defaults are the
    paper's setting (full-size model).

    `max_frames` crops training clips (a random window); validation and test clips are scored whole
    unless longer than `eval_max_frames` (None: no limit), a memory cap for extreme clips.
    `select_metric="auto"` picks the best epoch on the corpus's metric (`tfmamba.corpora.selection_metric`:
    validation WF1 on MELD, UA elsewhere).

    `input_norm="global"` standardises each feature dimension with the training split's mean and
    standard deviation (for un-normalised features such as raw log-mels); the statistics are
    folded into the model's input projection when the weights are saved, so a trained model
    takes raw features.

    `compile=True` runs the training steps through `torch.compile(model)` (`training.loop.step_module`): fused
    kernels on a GPU, for a compilation in a process's first fold (a minute or two); the weights, checkpoints and
    evaluation are the eager model's. `cuda_graphs=True` (with `compile`, on a GPU, one worker per fold) also
    replays the compiled forward and backward as CUDA graphs, one per batch shape (`training.loop.CompiledSteps`):
    for a step bound by its kernel launches on the host rather than by the GPU.

    `checkpoint_seconds` is the least time between two checkpoints (0: one after every epoch); the
    last epoch always writes one. A full-size checkpoint is ~330 MB (weights, best weights, AdamW's moments),
    written and, in a sweep, copied to Ray's storage: on a GPU, whose epochs take seconds, a checkpoint a minute
    spares most of that for at most a minute of training lost to a lost node.
    """

    # model (its num_classes and input_dim are placeholders until `model_config` sets them from the data)
    model: ModelConfig = field(default_factory=ModelConfig)
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
    compile: bool = False
    cuda_graphs: bool = False
    num_workers: int = 0
    checkpoint_seconds: float = 0.0
    input_norm: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        checks.coerce_floats(self)
        self._validate()

    def _validate(self) -> None:
        """Raise ConfigError naming the first bad training value (the model's are checked by ModelConfig)."""
        checks.check_types(self)
        checks.choice("scheduler", self.scheduler, SCHEDULERS)
        checks.choice("select_metric", self.select_metric, (AUTO, *SELECT_METRICS))
        checks.choice("input_norm", self.input_norm, INPUT_NORMS)
        for name in ("cmdt_bins", "batch_size", "epochs"):
            checks.at_least(name, getattr(self, name), 1)
        for name in ("patience", "num_workers", "seed"):
            checks.at_least(name, getattr(self, name), 0)
        checks.positive("cmdt_temperature", self.cmdt_temperature)
        checks.positive("lr", self.lr)
        checks.in_range("cmdt_weight", self.cmdt_weight, 0.0, math.inf)
        checks.in_range("weight_decay", self.weight_decay, 0.0, math.inf)
        checks.in_range("warmup_epochs", self.warmup_epochs, 0.0, math.inf)
        checks.in_range("checkpoint_seconds", self.checkpoint_seconds, 0.0, math.inf)
        if self.grad_clip is not None:
            checks.positive("grad_clip", self.grad_clip)
        if self.max_frames is not None:
            checks.at_least("max_frames", self.max_frames, 1)
        if self.eval_max_frames is not None:
            checks.at_least("eval_max_frames", self.eval_max_frames, 1)
        if self.cuda_graphs and not self.compile:
            raise ConfigError("cuda_graphs needs compile=true: the graphs are recorded from the compiled steps")

    def selection(self, corpus: str) -> tuple[str, bool]:
        """The validation metric that picks the best epoch on `corpus` ("auto": the corpus's own), and whether
        higher is better."""
        metric = selection_metric(corpus) if self.select_metric == AUTO else self.select_metric
        return metric, SELECT_METRICS[metric]

    def model_config(self, num_classes: int, input_dim: int) -> ModelConfig:
        """The network these settings describe, for `num_classes` classes and `input_dim` features."""
        return self.model.with_data_sizes(num_classes, input_dim)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values, flat: the model settings first, then the training ones (tuples as lists)."""
        model = self.model.to_dict()
        data = {name: model[name] for name in MODEL_SETTINGS}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"})
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A validated copy with `overrides` (flat settings) applied (unknown keys raise ConfigError)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from flat settings (model and training side by side, as in YAML); missing ones take defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a mapping of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SETTINGS), key=str)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(map(str, unknown))}; known: {', '.join(sorted(SETTINGS))}")
        try:
            model = ModelConfig(**{k: v for k, v in data.items() if k in MODEL_SETTINGS})
            return cls(model=model, **{k: v for k, v in data.items() if k not in MODEL_SETTINGS})
        except TypeError as err:  # e.g. a value of the wrong kind that a check could not name
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


# Every flat setting a config file, `--set` or a search space may name.
SETTINGS: tuple[str, ...] = MODEL_SETTINGS + tuple(f.name for f in fields(TrainConfig) if f.name != "model")


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
