"""The input standardisation (`input_norm: global`): per-dimension statistics of the training split, applied
while training and folded into the model's input projection when the weights are saved."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tfmamba.config import TrainConfig
from tfmamba.errors import ConfigError, DataError
from tfmamba.features.dataset import FeatureDataset

STD_FLOOR = 1e-5


class InputNorm(nn.Module):
    """`(x - mean) / std` per feature dimension (identity when built with `mean=None`).

    Applied to padded frames as well, so it is exactly what folding the statistics into the input
    projection does to a zero-padded raw batch (`fold_into_linear`).
    """

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        self.active = mean is not None
        if self.active:
            self.register_buffer("mean", mean.float())
            self.register_buffer("std", std.float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.active else x


def input_norm(config: TrainConfig, dataset: FeatureDataset, d_model: int) -> InputNorm:
    """The configured standardisation, with statistics of every frame of the training utterances."""
    if config.input_norm == "none":
        return InputNorm()
    if dataset.store.dim == d_model:
        raise ConfigError(f"input_norm=global needs input_dim ({dataset.store.dim}) != d_model ({d_model}): the "
                          f"statistics are folded into the input projection, which is absent when they are equal")
    store = dataset.store
    total = np.zeros(store.dim, dtype=np.float64)
    squares = np.zeros(store.dim, dtype=np.float64)
    count = 0
    for row in dataset.rows:
        frames = store.features[store.offsets[row]: store.offsets[row + 1]].astype(np.float64)
        total += frames.sum(axis=0)
        squares += np.square(frames).sum(axis=0)
        count += len(frames)
    if count == 0:
        raise DataError("cannot compute input statistics: the training utterances have no frames")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)).clip(min=STD_FLOOR)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise DataError(f"feature cache {store.uri}: the training features hold NaN or Inf values")
    return InputNorm(torch.from_numpy(mean).float(), torch.from_numpy(std).float())


def fold_into_linear(linear: nn.Linear, norm: InputNorm) -> dict[str, Tensor]:
    """Weight and bias of `linear(norm(x))` as a single linear layer on raw x."""
    weight = linear.weight.detach().float().cpu() / norm.std.cpu()[None, :]
    bias = linear.bias.detach().float().cpu() - weight @ norm.mean.cpu()
    return {"weight": weight.contiguous(), "bias": bias.contiguous()}
