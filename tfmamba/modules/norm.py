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

    def forward(self, x: Tensor, z: Tensor | None = None, inplace: bool = False, scale: bool = True) -> Tensor:
        """rmsnorm(x * silu(z)) * weight over each group of x (..., dim), in float32; returns x's dtype.

        Without autograd: `inplace` lets float32 x and z be overwritten (silu(z) in z's memory, the result in
        x's: no new (..., dim) arrays, whose first touch costs page faults); `scale=False` leaves out the
        final `* weight` (for a caller that has multiplied it into the next projection).
        """
        if torch.is_grad_enabled() or self.group_size != x.shape[-1]:
            return self._reference(x, z, scale)
        if inplace and x.dtype == torch.float32 and x.is_contiguous() and (z is None or z.dtype == torch.float32):
            gated = x.mul_(F.silu(z, inplace=True)) if z is not None else x
        else:
            gated = F.silu(z.float()).mul_(x) if z is not None else x.float().clone()
        # The sum of squares of each row as a batch of (1 x dim) @ (dim x 1) products: one pass, no temporary.
        rows = gated.reshape(-1, 1, gated.shape[-1])
        mean_square = torch.bmm(rows, rows.transpose(1, 2)).view(*gated.shape[:-1], 1).div_(gated.shape[-1])
        gated = gated.mul_(mean_square.add_(self.eps).rsqrt_())
        return (gated.mul_(self.weight) if scale else gated).to(x.dtype)

    def _reference(self, x: Tensor, z: Tensor | None, scale: bool = True) -> Tensor:
        """Out of place, for autograd and grouped norms: through `F.rms_norm`, one fused kernel each way on CUDA
        instead of ~5 passes over the activations (on a CPU a composite of those passes, as fast as them)."""
        gated = x.float() * F.silu(z.float()) if z is not None else x.float()
        weight = self.weight.float() if scale else None
        if self.group_size == gated.shape[-1]:
            return F.rms_norm(gated, (self.group_size,), weight, self.eps).to(x.dtype)
        out = F.rms_norm(gated.unflatten(-1, (-1, self.group_size)), (self.group_size,), None, self.eps).flatten(-2)
        return (out * weight if weight is not None else out).to(x.dtype)
