"""TF-Mamba and its Table III ablation variants.

Pipeline (paper Fig. 2): encoder features Lambda_0 (WavLM-Large, D = 1024) -> optional input
projection -> self-attention encoder (Lambda_1) -> TF-Mamba block (M, Eq. 1) -> masked mean
pooling over valid frames -> classifier MLP D -> 512 -> 256 -> C.

Variants (`VARIANTS`), each adding one component to the row before it:
  baseline       pooling + classifier
  attention      + self-attention encoder
  temporal       + temporal Mamba branch (second block slot passes the input through)
  tf             + frequency Mamba branch (the full network)
  tf_cmdt        the same network as `tf`, trained with the CMDT loss (lambda > 0)
  dual_temporal  two temporal branches instead of temporal + frequency
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tfmamba import checks
from tfmamba.device import to_device_async
from tfmamba.errors import ConfigError
from tfmamba.modules.attention import SelfAttentionEncoder
from tfmamba.modules.block import TFMambaBlock
from tfmamba.modules.mamba2 import FrequencyBranch, TemporalBranch
from tfmamba.ssd import BACKENDS

VARIANTS: tuple[str, ...] = ("baseline", "attention", "temporal", "tf", "tf_cmdt", "dual_temporal")
_BLOCK_SLOTS = {"temporal": "identity", "tf": "frequency", "tf_cmdt": "frequency", "dual_temporal": "temporal"}
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
        checks.choice("ssd_backend", self.ssd_backend, BACKENDS)
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


class ModelOutput(NamedTuple):
    """logits (batch, classes); sequence: M (batch, seqlen, d_model), the frames the CMDT loss compares;
    mask (batch, seqlen) bool, True on valid frames."""

    logits: Tensor
    sequence: Tensor
    mask: Tensor


def lengths_to_mask(lengths: Tensor, seqlen: int) -> Tensor:
    """(batch,) lengths -> (batch, seqlen) bool mask, True on valid frames."""
    return torch.arange(seqlen, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid frames: (batch, seqlen, d), (batch, seqlen) -> (batch, d)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class EmotionClassifier(nn.Sequential):
    """The MLP head: D -> 512 -> 256 -> C with ReLU and dropout."""

    def __init__(self, d_model: int, num_classes: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.1) -> None:
        layers: list[nn.Module] = []
        width = d_model
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class TFMamba(nn.Module):
    """TF-Mamba (or an ablation variant, see `VARIANTS`) over pre-computed encoder features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.input_proj = nn.Linear(c.input_dim, c.d_model) if c.input_dim != c.d_model else nn.Identity()
        self.encoder = (
            SelfAttentionEncoder(c.d_model, c.num_heads, c.ffn_dim, c.dropout) if c.variant != "baseline" else None
        )
        self.block = self._build_block(c) if c.variant in _BLOCK_SLOTS else None
        self.classifier = EmotionClassifier(c.d_model, c.num_classes, c.classifier_dims, c.dropout)

    @staticmethod
    def _build_block(c: ModelConfig) -> TFMambaBlock:
        mixer_kwargs = dict(d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, headdim=c.headdim,
                            ngroups=c.ngroups, chunk_size=c.chunk_size, ssd_backend=c.ssd_backend)
        slot = _BLOCK_SLOTS[c.variant]
        second: nn.Module | None = None
        if slot == "frequency":
            second = FrequencyBranch(c.d_model, filter_init=c.filter_init, filter_sharpness=c.filter_sharpness,
                                     filter_hidden=c.filter_hidden, conv=c.freq_conv, **mixer_kwargs)
        elif slot == "temporal":
            second = TemporalBranch(c.d_model, **mixer_kwargs)
        return TFMambaBlock(c.d_model, TemporalBranch(c.d_model, **mixer_kwargs), second)

    def forward(self, features: Tensor, lengths: Tensor) -> ModelOutput:
        """features (batch, seqlen, input_dim), right-padded; lengths (batch,) valid frames (>= 1).

        Lengths on the host (a CPU tensor, as the data loader makes them) while the features are on a GPU
        let every decision that depends on them (is anything padded, which rows share a length) be taken
        without waiting for the GPU: the step then has no host sync. Lengths on the GPU work too, with syncs.

        Inference on a CPU (no autograd) runs each utterance over its own valid frames: no work on
        padding, no masks, and buffers that stay in cache. Everything else runs the padded batch at
        once. Both give the same outputs (tests/test_model.py pins this): every layer is per frame,
        causal in time, or masked to the valid frames.
        """
        seqlen = features.shape[1]
        unpadded = lengths.device.type == "cpu" and bool((lengths >= seqlen).all())  # known on the host
        if unpadded:  # no copy of the lengths to the GPU (nor one a CUDA graph would have to capture)
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            mask = lengths_to_mask(to_device_async(lengths, features.device), seqlen)
        each_utterance = features.device.type == "cpu" and not torch.is_grad_enabled()
        if unpadded and not (each_utterance and features.shape[0] > 1):
            x = self.sequence(features, None)
            return ModelOutput(self.classifier(x.mean(1)), x, mask)
        if each_utterance:
            x = self._each_utterance(features, lengths)
        else:
            x = self.sequence(features, lengths)
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return ModelOutput(self.classifier(masked_mean(x, mask)), x, mask)

    def sequence(self, features: Tensor, lengths: Tensor | None) -> Tensor:
        """M before pooling (batch, seqlen, d_model); lengths None: every frame is valid (no masking work)."""
        seqlen = features.shape[1]
        mask = None if lengths is None else lengths_to_mask(to_device_async(lengths, features.device), seqlen)
        x = self.input_proj(features)
        if self.encoder is not None:
            x = self.encoder(x, mask)
        if self.block is not None:
            x = self.block(x, lengths)
        return x

    def _each_utterance(self, features: Tensor, lengths: Tensor) -> Tensor:
        """`sequence` of each utterance over its valid frames alone, zero-padded back to (batch, seqlen, d_model)."""
        out = features.new_zeros(features.shape[0], features.shape[1], self.config.d_model)
        for i, n in enumerate(lengths.tolist()):
            if n >= 1:
                seq = self.sequence(features[i : i + 1, :n], None)[0]
                out[i, : seq.shape[0]] = seq
        return out


def build_model(variant: str = "tf_cmdt", num_classes: int = 4, input_dim: int = 1024, **overrides: Any) -> TFMamba:
    """Build a Table III variant by name; `overrides` set any `ModelConfig` field (unknown ones raise)."""
    return TFMamba(ModelConfig.from_dict({"variant": variant, "num_classes": num_classes, "input_dim": input_dim,
                                          **overrides}))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_breakdown(model: nn.Module, depth: int = 2) -> dict[str, int]:
    """Trainable parameters per sub-module, grouped by the first `depth` parts of their names."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = ".".join(name.split(".")[:depth])
            out[key] = out.get(key, 0) + p.numel()
    return out
