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

A padded batch is filtered one of two ways, with the same result (tests/test_model.py pins it):

- "grouped": rows of equal length share one FFT; one group per distinct length. Fewest FLOPs,
  but a batch of 32 clips of 20 lengths runs every op of the filter 20 times (~110 ATen ops per
  group and step: a kernel launch each on a GPU), gathers and scatters each group, takes FFTs of
  awkward (often prime) lengths, and has data-dependent shapes that `torch.compile` and CUDA
  graphs cannot capture.
- "dft": every row's own-length DFT at once, as two batched matmuls against per-row Fourier
  bases (zero past each row's length and its n // 2 + 1 bins); a fixed number of ops for any
  batch and shapes that depend only on the padded length. Its O(n^2) work per channel (instead of
  O(n log n)) still beats the grouped form up to ~2000 frames on a CPU (fwd + bwd, 2304 channels,
  one thread: 2.0x faster at 300-1024 frames, even at 2048), so "auto" uses it up to
  `DFT_MAX_FRAMES`. Under bf16 autocast its matmuls run in bf16.

A batch with nothing padded ("unpadded", lengths None) takes the FFT ("fft"), or the same DFT with one basis
for every row ("dft"). "auto" takes the DFT under `torch.compile` up to `DFT_MAX_FRAMES`: Inductor generates no
code for complex tensors, so the FFT's compiled forward + backward keeps 29 ATen calls beside its fused kernels
(the FFTs, a complex-to-complex one in the backward, and the complex products, sums, copies and scatters around
them), the DFT's 10 (its matmuls, bf16 under autocast, ~54 GFLOP a step at 32 x 300 frames). On an H200 the
compiled step as one CUDA graph took 12.97 ms with the FFT and 11.06 ms with the DFT; on a CPU their O(n^2) work
costs about what the complex ops did, and a compiled step takes the same time either way (`benchmarks/README.md`,
thirteenth and fourteenth rounds). Eagerly the FFT stays: fewer ops, and the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfmamba.device import to_device_async


PADDED_MODES = ("auto", "grouped", "dft")
UNPADDED_MODES = ("auto", "fft", "dft")
# The longest padded batch the "auto" mode filters with the batched DFT: its matmuls and bases grow as frames^2
# (at 600 frames x 2304 channels x 32 clips, ~110 GFLOP forward and 90 MB of bases), the grouped form's FFTs do not.
DFT_MAX_FRAMES = 1024


def _std_mean_over_bins(x: Tensor, bins: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Population std and mean of x (batch, bins, channels) over the bins, as two plain reductions;
    `bins` (batch, bins, 1), 1 for a row's valid bins and 0 past them, restricts both to each row's own bins.

    `torch.std_mean` over a non-innermost dim runs a strided Welford pass ~8x slower on a CPU; the
    two-pass form (mean, then the mean square of the deviations) is as accurate in float32.
    """
    if bins is None:
        mean = x.mean(1, keepdim=True)
        return _std((x - mean).square().mean(1)), mean.squeeze(1)
    count = bins.sum(1, keepdim=True)
    mean = (x * bins).sum(1, keepdim=True) / count
    return _std(((x - mean).square() * bins).sum(1).div(count.squeeze(1))), mean.squeeze(1)


def _std(variance: Tensor) -> Tensor:
    """sqrt(variance), with a finite gradient where the variance is 0 (a clip of one frame has one bin)."""
    return variance.clamp_min(1e-20).sqrt()


def fourier_bases(lengths: Tensor, frames: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's own-length orthonormal real DFT as matrices, for a batch padded to `frames`.

    lengths (batch,) on the compute device -> (forward, inverse, bins):
    forward (batch, 2K, frames) maps a row's frames to [Re; Im] of its rfft (K = frames // 2 + 1 bins,
    zero past the row's n // 2 + 1 bins and its n frames); inverse (batch, frames, 2K) maps [Re; Im] back
    as irfft(n=row length) does (bins 1..(n-1)//2 count twice, imaginary parts of bin 0 and n/2 are ignored);
    bins (batch, K, 1) is 1 on each row's valid bins. The phase j*k mod n is taken in integers, so the
    angles are exact before the one rounding of cos and sin.
    """
    device = lengths.device
    n = lengths.to(torch.int64).clamp(min=1).view(-1, 1, 1)  # a row of 0 frames: zero bases (scale below)
    k = torch.arange(frames // 2 + 1, device=device).view(1, -1, 1)
    j = torch.arange(frames, device=device).view(1, 1, -1)
    angle = (j * k).remainder(n).to(torch.float32) * (2 * math.pi) / n.to(torch.float32)
    bins = k <= n // 2
    scale = (j < lengths.view(-1, 1, 1)) & bins
    scale = scale.to(torch.float32) * n.to(torch.float32).rsqrt()
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    forward = torch.cat([cos, -sin], dim=1)
    twice = torch.where((k == 0) | (2 * k == n), 1.0, 2.0)
    inverse = torch.cat([cos * twice, -sin * twice], dim=1).transpose(1, 2)
    return forward, inverse, bins.to(torch.float32)


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


def set_filter_modes(module: nn.Module, padded: str | None = None, unpadded: str | None = None) -> None:
    """Make every `FrequencyFilter` in `module` filter padded batches as `padded` (one of PADDED_MODES) and
    batches with nothing padded as `unpadded` (one of UNPADDED_MODES); None leaves that mode as it is."""
    for kind, mode, modes in (("padded", padded, PADDED_MODES), ("unpadded", unpadded, UNPADDED_MODES)):
        if mode is not None and mode not in modes:
            raise ValueError(f"unknown {kind}-batch filter mode {mode!r}: expected one of {', '.join(modes)}")
    for sub in module.modules():
        if isinstance(sub, FrequencyFilter):
            if padded is not None:
                sub.padded = padded
            if unpadded is not None:
                sub.unpadded = unpadded


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
        self.padded = "auto"  # how a padded batch is filtered: one of PADDED_MODES (see the module docstring)
        self.unpadded = "auto"  # and a batch with nothing padded: one of UNPADDED_MODES
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

    def log_threshold(self, log_power: Tensor, bins: Tensor | None = None) -> Tensor:
        """log omega for log power spectra (batch, bins, channels) -> (batch, 1, channels); `bins` as in
        `_std_mean_over_bins` (None: every bin is valid)."""
        base = torch.log(self.omega).expand(log_power.shape[0], -1)
        if self.head is not None:
            std, mean = _std_mean_over_bins(log_power, bins)
            base = base + self.head(torch.cat([mean, std], dim=-1).to(self.head[0].weight.dtype)).float()
        return base.unsqueeze(1)

    def mask(self, power: Tensor, inplace: bool = False, bins: Tensor | None = None) -> Tensor:
        """Soft pass mask in [0, 1] for power spectra (batch, bins, channels); inplace: computed in power's memory;
        `bins` as in `_std_mean_over_bins` (None: every bin is valid)."""
        if not inplace:
            log_power = torch.log(power + self.eps)
            return torch.sigmoid(self.sharpness * (log_power - self.log_threshold(log_power, bins)))
        log_power = power.add_(self.eps).log_()
        return log_power.sub_(self.log_threshold(log_power, bins)).mul_(self.sharpness).sigmoid_()

    def _filter(self, seq: Tensor) -> Tensor:
        """Filter (batch, n, channels) sequences that are all valid, along dim 1 (in place without autograd)."""
        if torch.is_grad_enabled() or seq.device.type != "cpu":  # the tiled copy below is for a CPU's TLB
            spec = torch.fft.rfft(seq, dim=1, norm="ortho")
            power = spec.real.square() + spec.imag.square()
            return torch.fft.irfft(spec * self.mask(power), n=seq.shape[1], dim=1, norm="ortho")
        spec = torch.fft.rfft(_channels_first(seq), dim=-1, norm="ortho").transpose(1, 2)  # (batch, bins, channels)
        power = spec.real.square().addcmul_(spec.imag, spec.imag)
        return torch.fft.irfft(spec.mul_(self.mask(power, inplace=True)), n=seq.shape[1], dim=1, norm="ortho")

    def _filter_dft(self, xf: Tensor, lengths: Tensor | None) -> Tensor:
        """Filter a float32 batch (batch, frames, channels) with each row's own-length DFT as matmuls; lengths
        None: every row is valid throughout, and one basis serves them all.

        Under bf16 autocast the two matmuls run in bf16 (accumulating in float32), as the projection that made
        the input did and as the output will be stored; the power, threshold and mask stay in float32."""
        frames = xf.shape[1]
        if lengths is None:
            forward, inverse, _ = fourier_bases(torch.full((1,), frames, device=xf.device), frames)
            bins = None
        else:
            forward, inverse, bins = fourier_bases(to_device_async(lengths, xf.device), frames)
        spec = torch.matmul(forward, xf).float()  # (batch, 2K, channels): [Re; Im]
        parts = spec.unflatten(1, (2, -1))  # (batch, 2, K, channels): Re and Im
        mask = self.mask(parts.square().sum(1), bins=bins)
        return torch.matmul(inverse, (parts * mask.unsqueeze(1)).flatten(1, 2)).float()

    def unpadded_mode(self, frames: int) -> str:
        """How "auto" filters a batch with nothing padded: the DFT under `torch.compile` up to `DFT_MAX_FRAMES`
        (no complex numbers in the compiled graph), the FFT otherwise (module docstring)."""
        if self.unpadded == "auto":
            return "dft" if torch.compiler.is_compiling() and frames <= DFT_MAX_FRAMES else "fft"
        return self.unpadded

    def padded_mode(self, lengths: Tensor, frames: int) -> str:
        """How "auto" filters a padded batch: the batched DFT when its rows have more than one length and it
        is at most `DFT_MAX_FRAMES` long, else grouped (one group, or less arithmetic for long clips).

        Under `torch.compile` the lengths are not read (a host-side read splits the compiled graph): a batch of
        one length up to `DFT_MAX_FRAMES` takes the DFT too, with the same result."""
        if self.padded == "auto":
            if frames > DFT_MAX_FRAMES:
                return "grouped"
            return "dft" if torch.compiler.is_compiling() or bool((lengths != lengths[0]).any()) else "grouped"
        return self.padded

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (batch, seqlen, channels), lengths (batch,) valid frames -> same shape, padding zeroed.

        A padded batch is filtered as `padded` says ("auto": `padded_mode`); with `lengths` on the host
        (a CPU tensor) neither way needs a GPU sync. Lengths None (nothing padded): as `unpadded` says ("auto":
        `unpadded_mode`)."""
        with torch.profiler.record_function("frequency_filter"):
            dtype = x.dtype
            xf = x.float()
            if lengths is None:
                if self.unpadded_mode(x.shape[1]) == "dft":
                    return self._filter_dft(xf, None).to(dtype)
                return self._filter(xf).to(dtype)
            if self.padded_mode(lengths, x.shape[1]) == "dft":
                return self._filter_dft(xf, lengths).to(dtype)
            out = torch.zeros_like(xf)
            for n in torch.unique(lengths).tolist():
                if n == 0:
                    continue
                rows = to_device_async((lengths == n).nonzero(as_tuple=True)[0], x.device)
                out[rows, :n] = self._filter(xf[rows, :n])
            return out.to(dtype)
