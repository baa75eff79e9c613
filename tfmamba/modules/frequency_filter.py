"""The adaptive frequency filter of the frequency branch (paper Eq. 3-4).

Eq. 4 keeps the bins of Theta = FFT(Phi) along time whose power exceeds a threshold:
Theta * (|Theta|^2 > omega). A hard comparison gives omega no gradient, so it could never be
learned. We read the mask as its smooth version, a sigmoid in the log-power domain::

    mask = sigmoid(sharpness * (log |Theta|^2 - log omega)),   omega = softplus(omega_raw) > 0

As sharpness grows this tends to the paper's hard mask; the log domain makes the sharpness
independent of the features' scale.

The paper learns the thresholds "from Theta^F", so omega depends on the utterance: statistics of
each channel's log power spectrum (its mean and standard deviation over the bins) go through a
small head (2C -> hidden -> C) whose output scales the per-channel base threshold::

    log omega(x) = log softplus(omega_raw) + head(mean_k log|Theta_k|^2, std_k log|Theta_k|^2)

The head's last layer starts at zero, so at initialisation omega equals `filter_init` (searched by
the sweep) for every utterance, and the base and head both get gradients through the soft mask.
`hidden=0` drops the head: one input-independent omega per channel (the earlier form). Why this
is the default (the paper's parameter counts) is in docs/architecture.md.

Speech-feature trajectories carry most of their power at low modulation frequencies, so keeping
high-power bins acts as the paper's data-adaptive low-pass filter while also dropping weak
(noisy) components.

The FFT is taken per utterance over its own valid frames (norm="ortho", so power does not grow
with length), and the filtered signal is written back to those frames only: an utterance's
output never depends on how much padding its batch has.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfmamba.device import to_device_async


def _std_mean_over_bins(x: Tensor) -> tuple[Tensor, Tensor]:
    """Population std and mean of x (batch, bins, channels) over the bins, as two plain reductions.

    `torch.std_mean` over a non-innermost dim runs a strided Welford pass ~8x slower on a CPU; the
    two-pass form (mean, then the mean square of the deviations) is as accurate in float32.
    """
    mean = x.mean(1, keepdim=True)
    return (x - mean).square().mean(1).sqrt(), mean.squeeze(1)


def _channels_first(seq: Tensor, tile: int = 256) -> Tensor:
    """(batch, n, channels) -> a contiguous (batch, channels, n) copy, `tile` frames at a time.

    The real FFT along a strided time axis is slow on a CPU once the frames span more pages than the
    TLB holds (MKL: 5 ms at 1000 frames x 2304 channels, 140 ms at 4000), and so is one transposing
    copy; copied a tile at a time, then transformed along contiguous memory, it is ~2x faster at 4000.
    """
    out = seq.new_empty(seq.shape[0], seq.shape[2], seq.shape[1])
    for start in range(0, seq.shape[1], tile):
        out[:, :, start : start + tile].copy_(seq[:, start : start + tile].transpose(1, 2))
    return out


class FrequencyFilter(nn.Module):
    """Soft power-threshold filter along time; the per-channel threshold omega is learned from the spectrum."""

    def __init__(
        self,
        channels: int,
        filter_init: float = 0.05,
        sharpness: float = 4.0,
        eps: float = 1e-8,
        hidden: int = 4,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if filter_init <= 0:
            raise ValueError(f"filter_init (omega) must be > 0, got {filter_init}")
        if sharpness <= 0:
            raise ValueError(f"filter sharpness must be > 0, got {sharpness}")
        if hidden < 0:
            raise ValueError(f"the filter head's hidden width must be >= 0, got {hidden}")
        self.sharpness = sharpness
        self.eps = eps
        # Inverse softplus, so that softplus(omega_raw) == filter_init at the start.
        raw = filter_init + math.log(-math.expm1(-filter_init))
        self.omega_raw = nn.Parameter(torch.full((channels,), raw, device=device, dtype=dtype))
        self.omega_raw._no_weight_decay = True
        self.head: nn.Sequential | None = None
        if hidden:
            factory_kwargs = {"device": device, "dtype": dtype}
            self.head = nn.Sequential(nn.Linear(2 * channels, hidden, **factory_kwargs), nn.SiLU(),
                                      nn.Linear(hidden, channels, bias=False, **factory_kwargs))
            nn.init.zeros_(self.head[2].weight)  # omega = filter_init for every input at the start

    @property
    def omega(self) -> Tensor:
        """The base threshold per channel (channels,): omega itself without a head, its scale with one."""
        return F.softplus(self.omega_raw.float())

    def log_threshold(self, log_power: Tensor) -> Tensor:
        """log omega for log power spectra (batch, bins, channels) -> (batch, 1, channels)."""
        base = torch.log(self.omega).expand(log_power.shape[0], -1)
        if self.head is not None:
            std, mean = _std_mean_over_bins(log_power)
            base = base + self.head(torch.cat([mean, std], dim=-1).to(self.head[0].weight.dtype)).float()
        return base.unsqueeze(1)

    def mask(self, power: Tensor, inplace: bool = False) -> Tensor:
        """Soft pass mask in [0, 1] for power spectra (batch, bins, channels); inplace: computed in power's memory."""
        if not inplace:
            log_power = torch.log(power + self.eps)
            return torch.sigmoid(self.sharpness * (log_power - self.log_threshold(log_power)))
        log_power = power.add_(self.eps).log_()
        return log_power.sub_(self.log_threshold(log_power)).mul_(self.sharpness).sigmoid_()

    def _filter(self, seq: Tensor) -> Tensor:
        """Filter (batch, n, channels) sequences that are all valid, along dim 1 (in place without autograd)."""
        if torch.is_grad_enabled() or seq.device.type != "cpu":  # the tiled copy below is for a CPU's TLB
            spec = torch.fft.rfft(seq, dim=1, norm="ortho")
            power = spec.real.square() + spec.imag.square()
            return torch.fft.irfft(spec * self.mask(power), n=seq.shape[1], dim=1, norm="ortho")
        spec = torch.fft.rfft(_channels_first(seq), dim=-1, norm="ortho").transpose(1, 2)  # (batch, bins, channels)
        power = spec.real.square().addcmul_(spec.imag, spec.imag)
        return torch.fft.irfft(spec.mul_(self.mask(power, inplace=True)), n=seq.shape[1], dim=1, norm="ortho")

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (batch, seqlen, channels), lengths (batch,) valid frames -> same shape, padding zeroed.

        Rows are grouped by length; with `lengths` on the host (a CPU tensor) the grouping needs no GPU sync."""
        with torch.profiler.record_function("frequency_filter"):
            dtype = x.dtype
            xf = x.float()
            if lengths is None:
                return self._filter(xf).to(dtype)
            out = torch.zeros_like(xf)
            for n in torch.unique(lengths).tolist():
                if n == 0:
                    continue
                rows = to_device_async((lengths == n).nonzero(as_tuple=True)[0], x.device)
                out[rows, :n] = self._filter(xf[rows, :n])
            return out.to(dtype)
