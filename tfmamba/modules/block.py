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

    Inference (no autograd) multiplies the fusion into the branches' output projections once:
    fuse(Concat(W_T y_T, W_F y_F)) = (U_T W_T) y_T + (U_F W_F) y_F + bias, with U = [U_T | U_F]
    the fusion's weight, saves the fusion's matmul per frame (2 D^2 of the block's ~13 D^2 FLOPs)
    and the concat. The gated RMSNorms' weights (a per-channel scale just before W) are multiplied in
    too, which saves a pass over each branch's output. The products are cached and rebuilt whenever a
    weight changes.
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
        self._folded: tuple[tuple[tuple[int, int], ...], list[Tensor]] | None = None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (batch, seqlen, d_model), lengths (batch,) or None (all frames valid) -> (batch, seqlen, d_model)."""
        normed = self.norm(x)
        folded = None if torch.is_grad_enabled() else self._folded_weights()
        if folded is None:
            a = self.first(normed, lengths)
            b = self.second(normed, lengths) if self.second is not None else normed
            return x + self.fuse(torch.cat([a, b], dim=-1))
        inner = [self.first.mix(normed, lengths, norm_weight=False),
                 self.second.mix(normed, lengths, norm_weight=False) if self.second is not None else normed]
        out = torch.add(x, self.fuse.bias)
        flat = out.view(-1, out.shape[-1])
        for y, weight in zip(inner, folded):
            y = y.reshape(-1, y.shape[-1])
            if y.dtype == flat.dtype:
                flat.addmm_(y, weight.t())
            else:  # under autocast a branch gives bf16: multiply in its dtype, add into the float32 residual
                flat.add_(y @ weight.t().to(y.dtype))
        return out

    def _folded_weights(self) -> list[Tensor] | None:
        """[U_T W_T diag(g_T), U_F W_F diag(g_F)] (g: the branch's RMSNorm weight; U_2 alone for an identity slot),
        cached until a weight changes; None for weights made under inference_mode, which carry no version
        counter to tell a change by."""
        d_model = self.fuse.out_features
        parts = [self.fuse.weight[:, :d_model], self.fuse.weight[:, d_model:]]
        branches = [self.first, self.second]
        outs = [None if b is None else (b.out_proj.weight, b.norm.weight) for b in branches]
        tensors = [self.fuse.weight] + [w for pair in outs if pair is not None for w in pair]
        if any(t.is_inference() for t in tensors):
            return None
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            with torch.autocast(self.fuse.weight.device.type, enabled=False):  # in the weights' own dtype, always
                self._folded = (key, [u if pair is None else u @ (pair[0] * pair[1].to(pair[0].dtype))
                                      for u, pair in zip(parts, outs)])
        return self._folded[1]
