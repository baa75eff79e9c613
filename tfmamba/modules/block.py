"""The TF-Mamba block (paper Eq. 1): M = Lambda_1 + Proj(Concat(T(norm Lambda_1), F(norm Lambda_1)))."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TFMambaBlock(nn.Module):
    """Two branches side by side on the normalised input, concatenated (2D), projected back to D, residual.

    Eq. 1 writes M = Lambda_1 + Concat(T, F) in R^{L x D}; a concat of two D-wide outputs is 2D
    wide, so a linear fusion maps it back to D. The ablation variants keep this shape and change
    only what fills the two slots: (T, F) for the full model, (T, T') for the dual-temporal
    ablation, and (T, identity) for the temporal-only row, where the second slot passes the
    normalised input through unchanged (so each Table III row adds exactly one component).
    """

    def __init__(
        self,
        d_model: int,
        first: nn.Module,
        second: nn.Module | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, device=device, dtype=dtype)
        self.first = first
        self.second = second
        self.fuse = nn.Linear(2 * d_model, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (batch, seqlen, d_model), lengths (batch,) -> (batch, seqlen, d_model)."""
        normed = self.norm(x)
        a = self.first(normed, lengths)
        b = self.second(normed, lengths) if self.second is not None else normed
        return x + self.fuse(torch.cat([a, b], dim=-1))
