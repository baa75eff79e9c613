"""The adaptive frequency filter of the frequency branch (paper Eq. 3-4).

Eq. 4 keeps the bins of Theta = FFT(Phi) along time whose power exceeds a threshold:
Theta * (|Theta|^2 > omega). A hard comparison gives omega no gradient, so it could never be
learned. We read the mask as its smooth version, a sigmoid in the log-power domain::

    mask = sigmoid(sharpness * (log |Theta|^2 - log omega)),   omega = softplus(omega_raw) > 0

with one learnable omega per channel, initialised to `filter_init` (searched by the sweep).
As sharpness grows this tends to the paper's hard mask; the log domain makes the sharpness
independent of the features' scale. Speech-feature trajectories carry most of their power at
low modulation frequencies, so keeping high-power bins acts as the paper's data-adaptive
low-pass filter while also dropping weak (noisy) components.

The FFT is taken per utterance over its own valid frames (norm="ortho", so power does not grow
with length), and the filtered signal is written back to those frames only: an utterance's
output never depends on how much padding its batch has.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrequencyFilter(nn.Module):
    """Soft power-threshold filter along time with a learnable per-channel threshold omega."""

    def __init__(
        self,
        channels: int,
        filter_init: float = 0.05,
        sharpness: float = 4.0,
        eps: float = 1e-8,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if filter_init <= 0:
            raise ValueError(f"filter_init (omega) must be > 0, got {filter_init}")
        if sharpness <= 0:
            raise ValueError(f"filter sharpness must be > 0, got {sharpness}")
        self.sharpness = sharpness
        self.eps = eps
        # Inverse softplus, so that softplus(omega_raw) == filter_init at the start.
        raw = filter_init + math.log(-math.expm1(-filter_init))
        self.omega_raw = nn.Parameter(torch.full((channels,), raw, device=device, dtype=dtype))
        self.omega_raw._no_weight_decay = True

    @property
    def omega(self) -> Tensor:
        return F.softplus(self.omega_raw.float())

    def mask(self, power: Tensor) -> Tensor:
        """Soft pass mask in [0, 1] for a power spectrum (..., bins, channels)."""
        return torch.sigmoid(self.sharpness * (torch.log(power + self.eps) - torch.log(self.omega)))

    def _filter(self, seq: Tensor) -> Tensor:
        """Filter (batch, n, channels) sequences that are all valid, along dim 1."""
        spec = torch.fft.rfft(seq, dim=1, norm="ortho")
        power = spec.real.square() + spec.imag.square()
        return torch.fft.irfft(spec * self.mask(power), n=seq.shape[1], dim=1, norm="ortho")

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (batch, seqlen, channels), lengths (batch,) valid frames -> same shape, padding zeroed."""
        with torch.profiler.record_function("frequency_filter"):
            dtype = x.dtype
            xf = x.float()
            if lengths is None:
                return self._filter(xf).to(dtype)
            out = torch.zeros_like(xf)
            for n in torch.unique(lengths).tolist():
                if n == 0:
                    continue
                rows = (lengths == n).nonzero(as_tuple=True)[0]
                out[rows, :n] = self._filter(xf[rows, :n])
            return out.to(dtype)
