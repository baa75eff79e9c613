"""The self-attention encoder Lambda_0 -> Lambda_1 (paper Sec. II-A): 8-head attention over D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttentionEncoder(nn.Module):
    """One post-norm Transformer encoder layer: multi-head self-attention, then a small FFN.

    The paper gives only "self-attention, 8 heads, D = 1024". Its Table III adds 4.59 M
    parameters for this encoder; attention (4.20 M) plus two LayerNorms leaves ~0.39 M, which a
    feed-forward of width 192 fills: `ffn_dim=192` reproduces the paper's 5.25 M total.

    The weights live in an `nn.MultiheadAttention` (so saved models keep their keys), but the
    attention itself is `scaled_dot_product_attention` on them: the same math, through PyTorch's
    fused (flash) kernels, and with no mask at all when nothing is padded (`mask=None`).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 8,
        ffn_dim: int = 192,
        dropout: float = 0.1,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True, **factory_kwargs)
        self.norm1 = nn.LayerNorm(d_model, **factory_kwargs)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim, **factory_kwargs),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model, **factory_kwargs),
        )
        self.norm2 = nn.LayerNorm(d_model, **factory_kwargs)
        self.dropout = nn.Dropout(dropout)

    def self_attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head self-attention of x (batch, seqlen, d_model) over the keys where mask is True (None: all)."""
        attn = self.attn
        batch, seqlen, d_model = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, seqlen, 3, heads, d_model // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seqlen, head_dim)
        keys = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=attn.dropout if self.training else 0.0)
        return attn.out_proj(out.transpose(1, 2).reshape(batch, seqlen, d_model))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (batch, seqlen, d_model); mask (batch, seqlen) bool, True on valid frames, or None when all are."""
        x = self.norm1(x + self.dropout(self.self_attention(x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))
