"""A network's settings (`ModelConfig`) and the names they choose from, apart from the network itself.

Nothing here imports torch: a process that only reads, checks or writes settings (a sweep's trial driver,
a config file's loader) stays light. `tfmamba.model` builds the network these settings describe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tfmamba import checks
from tfmamba.errors import ConfigError

SSD_BACKENDS: tuple[str, ...] = ("auto", "torch", "mamba_ssm")
VARIANTS: tuple[str, ...] = ("baseline", "attention", "temporal", "tf", "tf_cmdt", "dual_temporal")
# The frequency branch as built before `freq_conv` and `filter_hidden` existed (conv + SiLU before the
# filter, one input-independent omega per channel): what a saved model.json without these keys describes.
LEGACY_MODEL_SETTINGS: dict[str, Any] = {"freq_conv": True, "filter_hidden": 0}


# Sizes a network takes from its data (the labels and the feature cache), not from a training config.
DATA_SIZES: tuple[str, ...] = ("num_classes", "input_dim")
_POSITIVE = ("num_classes", "input_dim", "d_model", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size",
             "num_heads", "ffn_dim")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network, saved beside its weights (model.json); the one place that declares
    the model's settings (`TrainConfig.model` is one). Every value is checked when it is built."""

    variant: str = "tf_cmdt"
    num_classes: int = 4
    input_dim: int = 1024
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "classifier_dims", checks.int_tuple("classifier_dims", self.classifier_dims))
        checks.coerce_floats(self)
        self._validate()

    def _validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        checks.check_types(self)
        checks.choice("variant", self.variant, VARIANTS)
        checks.choice("ssd_backend", self.ssd_backend, SSD_BACKENDS)
        for name in _POSITIVE:
            checks.at_least(name, getattr(self, name), 1)
        checks.at_least("num_classes", self.num_classes, 2)
        checks.at_least("filter_hidden", self.filter_hidden, 0, " (0: one fixed omega per channel)")
        if not self.classifier_dims or min(self.classifier_dims) < 1:
            raise ConfigError(f"classifier_dims must be positive widths, got {list(self.classifier_dims)}")
        checks.in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        checks.positive("filter_init", self.filter_init)
        checks.positive("filter_sharpness", self.filter_sharpness)
        if (self.expand * self.d_model) % self.headdim:
            raise ConfigError(f"expand * d_model ({self.expand * self.d_model}) must be a multiple of headdim ({self.headdim})")
        if ((self.expand * self.d_model) // self.headdim) % self.ngroups:
            raise ConfigError(f"the number of heads must be a multiple of ngroups ({self.ngroups})")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classifier_dims"] = list(self.classifier_dims)
        return d

    def with_data_sizes(self, num_classes: int, input_dim: int) -> ModelConfig:
        """This network for `num_classes` classes and `input_dim`-dim features (checked)."""
        return replace(self, num_classes=num_classes, input_dim=input_dim)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> ModelConfig:
        """The config of a saved model.json; keys it predates take their then-fixed values (LEGACY_MODEL_SETTINGS)."""
        return cls.from_dict({**LEGACY_MODEL_SETTINGS, **data})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)
