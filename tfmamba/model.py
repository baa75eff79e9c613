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

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tfmamba.device import to_device_async
from tfmamba.modules.attention import SelfAttentionEncoder
from tfmamba.modules.block import TFMambaBlock
from tfmamba.modules.mamba2 import FrequencyBranch, TemporalBranch
from tfmamba.ssd import traced_length
from tfmamba.model_config import DATA_SIZES, LEGACY_MODEL_SETTINGS, VARIANTS, ModelConfig  # noqa: F401 (re-exported)

_BLOCK_SLOTS = {"temporal": "identity", "tf": "frequency", "tf_cmdt": "frequency", "dual_temporal": "temporal"}


class ModelOutput(NamedTuple):
    """logits (batch, classes); sequence: M (batch, seqlen, d_model), the frames the CMDT loss compares;
    mask (batch, seqlen) bool, True on valid frames."""

    logits: Tensor
    sequence: Tensor
    mask: Tensor


def known_unpadded(lengths: Tensor, seqlen: int) -> bool:
    """Whether every row of a batch padded to `seqlen` is valid throughout, read from lengths on the host; False
    for lengths on a GPU, where reading them would make the host wait."""
    return lengths.device.type == "cpu" and bool((lengths >= seqlen).all())


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

    def forward(self, features: Tensor, lengths: Tensor | None) -> ModelOutput:
        """features (batch, seqlen, input_dim), right-padded; lengths (batch,) valid frames (>= 1), or None when
        every frame is valid (what a compiled training step passes for a batch with nothing padded).

        Lengths on the host (a CPU tensor, as the data loader makes them) while the features are on a GPU
        let every decision that depends on them (is anything padded, which rows share a length) be taken
        without waiting for the GPU: the step then has no host sync. Lengths on the GPU work too, with syncs.

        Inference on a CPU (no autograd) runs each utterance over its own valid frames: no work on
        padding, no masks, and buffers that stay in cache. Everything else runs the padded batch at
        once. Both give the same outputs (tests/test_model.py pins this): every layer is per frame,
        causal in time, or masked to the valid frames.
        """
        seqlen = features.shape[1]
        # Known on the host. Under torch.compile it is not read (that would split the graph): the padded path,
        # unless the caller, who can read them, passes None (`training.loop.CompiledSteps`).
        unpadded = lengths is None or (not torch.compiler.is_compiling() and known_unpadded(lengths, seqlen))
        if unpadded:  # no copy of the lengths to the GPU (nor one a CUDA graph would have to capture)
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            mask = lengths_to_mask(to_device_async(lengths, features.device), seqlen)
        each_utterance = features.device.type == "cpu" and not torch.is_grad_enabled()
        if unpadded and not (each_utterance and features.shape[0] > 1):
            x = self.sequence(features, None)
            return ModelOutput(self.classifier(x.mean(1)), x, mask)
        if each_utterance:
            full = torch.full(features.shape[:1], seqlen, dtype=torch.long)
            x = self._each_utterance(features, full if lengths is None else lengths)
        else:
            x = self.sequence(features, lengths)
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return ModelOutput(self.classifier(masked_mean(x, mask)), x, mask)

    def compiled_frames(self, seqlen: int) -> int:
        """The frames a compiled training step pads a batch of `seqlen` to (`training.loop.CompiledSteps`), so that
        one graph serves every length: the SSD's `traced_length`, or `seqlen` for a variant without one."""
        return seqlen if self.block is None else traced_length(seqlen, self.config.chunk_size)

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
