"""Gated RMSNorm, as in mamba-ssm's Mamba2 (norm_before_gate=False): rmsnorm(x * silu(z)) * weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNormGated(nn.Module):
    """RMS-normalise x gated by silu(z), per group of `group_size` channels (mamba-ssm's layout)."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = group_size or dim
        if dim % self.group_size != 0:
            raise ValueError(f"dim ({dim}) must be a multiple of group_size ({self.group_size})")
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """rmsnorm(x * silu(z)) * weight over each group of x (..., dim), in float32; returns x's dtype."""
        if torch.is_grad_enabled() or self.group_size != x.shape[-1]:
            return self._reference(x, z)
        gated = F.silu(z.float()).mul_(x) if z is not None else x.float().clone()
        mean_square = torch.linalg.vecdot(gated, gated).unsqueeze(-1).div_(gated.shape[-1])
        scale = mean_square.add_(self.eps).rsqrt_()
        return gated.mul_(scale).mul_(self.weight).to(x.dtype)

    def _reference(self, x: Tensor, z: Tensor | None) -> Tensor:
        """Out of place, for autograd and grouped norms."""
        dtype = x.dtype
        x = x.float()
        if z is not None:
            x = x * F.silu(z.float())
        groups = x.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight.float()).to(dtype)
