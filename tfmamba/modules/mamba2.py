"""A Mamba-2 mixer with mamba-ssm's parameter layout, used by both TF-Mamba branches.

Temporal branch (paper Eq. 2, 5-6): in_proj -> causal depthwise conv over [x, B, C] -> SiLU ->
SSD -> gated RMSNorm with z -> out_proj. Frequency branch (Eq. 3-4, 6): the same mixer without
the conv and SiLU, which Eq. 2 puts in the temporal module only: the FFT of Eq. 3 is taken of the
projection's [x, B, C] part (Phi_0^F of Split(Phi^F)), a `FrequencyFilter` keeps its strong bins,
and the inverse FFT gives X^F, B^F, C^F for the SSD. A (through dt) and the gate z are not
filtered, as in the paper's Split of Phi^F. `FrequencyBranch(conv=True)` is the earlier form
(conv + SiLU, then the filter), kept for models saved before the change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfmamba.modules.frequency_filter import FrequencyFilter
from tfmamba.modules.norm import RMSNormGated
from tfmamba.ssd import ssd


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer: (batch, seqlen, d_model) -> (batch, seqlen, d_model), causal in time."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        ssd_backend: str = "auto",
        xbc_filter: nn.Module | None = None,
        conv: bool = True,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim != 0:
            raise ValueError(f"expand * d_model ({self.d_inner}) must be a multiple of headdim ({headdim})")
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"nheads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        self.chunk_size, self.ssd_backend = chunk_size, ssd_backend
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        # Order: [z, x, B, C, dt]
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, **factory_kwargs
        ) if conv else None
        self.xbc_filter = xbc_filter

        # dt_bias = inverse softplus of dt ~ logUniform[dt_min, dt_max] (mamba-ssm's init).
        dt = torch.exp(torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # A = -exp(A_log) < 0: computed in float32 at use, since exp may overflow in half precision.
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory_kwargs)

    def forward(self, u: Tensor, lengths: Tensor | None = None) -> Tensor:
        """u (batch, seqlen, d_model); lengths (batch,) valid frames for a frequency filter (None: all valid)."""
        return self.out_proj(self.mix(u, lengths))

    def conv_silu(self, xbc: Tensor) -> Tensor:
        """SiLU of the causal depthwise conv along time of xbc (batch, seqlen, conv_dim), in that layout.

        Without autograd on a CPU the conv runs as a 2-D conv on a channels-last view of xbc (batch, conv_dim,
        1, seqlen with the channels innermost), which oneDNN's depthwise kernel takes as it is: no
        transposing copies, ~5x faster than `nn.Conv1d` on the transposed input (the same sums).
        Under `torch.compile` it is d_conv shifted multiply-adds, which Inductor fuses into one elementwise kernel
        for any length: its lowering of the conv's backward fixes the sequence length, a recompilation per padded
        length.
        """
        seqlen = xbc.shape[1]
        if torch.compiler.is_compiling():
            padded = F.pad(xbc, (0, 0, self.d_conv - 1, 0))  # d_conv - 1 zero frames before the first
            weight = self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv): tap j reads frame t + j - (d_conv - 1)
            out = self.conv1d.bias + padded[:, :seqlen] * weight[:, 0]
            for j in range(1, self.d_conv):
                out = out + padded[:, j:j + seqlen] * weight[:, j]
            return F.silu(out)
        if torch.is_grad_enabled() or xbc.device.type != "cpu":
            return F.silu(self.conv1d(xbc.transpose(1, 2))[..., :seqlen].transpose(1, 2))
        channels_last = xbc.unsqueeze(1).permute(0, 3, 1, 2)  # (batch, conv_dim, 1, seqlen), a view
        out = F.conv2d(channels_last, self.conv1d.weight.unsqueeze(2), self.conv1d.bias,
                       padding=(0, self.d_conv - 1), groups=self.conv_dim)[..., :seqlen]
        return F.silu(out.permute(0, 2, 3, 1).reshape(xbc.shape), inplace=True)

    def mix(self, u: Tensor, lengths: Tensor | None = None, norm_weight: bool = True) -> Tensor:
        """Everything before `out_proj`: (batch, seqlen, d_model) -> the gated, normalised SSD output (batch, seqlen, d_inner);
        `norm_weight=False` leaves out the norm's final per-channel weight (for a caller that folds it into out_proj)."""
        batch, seqlen, _ = u.shape
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if self.conv1d is not None:
            xbc = self.conv_silu(xbc)
        if self.xbc_filter is not None:
            xbc = self.xbc_filter(xbc, lengths)
        x, B, C = torch.split(xbc, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        y = ssd(
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            backend=self.ssd_backend,
        )
        return self.norm(y.flatten(-2).to(u.dtype), z, inplace=True, scale=norm_weight)  # y and z are this call's own


class TemporalBranch(Mamba2Mixer):
    """T(.): the temporal-aware Mamba-2 branch (Eq. 2-3), a plain Mamba-2 mixer."""


class FrequencyBranch(Mamba2Mixer):
    """F(.): the frequency-filter Mamba-2 branch (Eq. 3-4): the projected [x, B, C] filtered along time
    before the SSD, with no conv or SiLU (`conv=True`: the earlier form, conv + SiLU before the filter)."""

    def __init__(self, d_model: int, filter_init: float = 0.05, filter_sharpness: float = 4.0,
                 filter_hidden: int = 4, conv: bool = False, **kwargs) -> None:
        super().__init__(d_model, conv=conv, **kwargs)
        self.xbc_filter = FrequencyFilter(
            self.conv_dim, filter_init, filter_sharpness, hidden=filter_hidden,
            device=kwargs.get("device"), dtype=kwargs.get("dtype")
        )
