"""Training losses: the Complex Metric-Distance Triplet (CMDT) loss of TF-Mamba (Sec. II.C, Eq. 7-9).

The paper trains with ``L_SER = L_CE + lambda * L_CMDT`` (Eq. 9, `total_loss`). L_CMDT (Eq. 8) is an
InfoNCE loss whose similarity is VecSim (Eq. 7), a cosine between complex vectors ``M_i[k]`` obtained
"by FFT" from the TF-Mamba block output. The paper does not say which axis is transformed, how
padding is handled or how the bins k are combined; this module fixes one reading and documents why.

Reading of ``M_i[k]``
---------------------
1. Padded frames are set to zero (selected with ``torch.where``, so even NaN/Inf garbage there is
   ignored), so an utterance's spectrum depends only on its valid frames.
2. ``torch.fft.rfft`` runs along time with a COMMON length ``n = L``, the batch's padded length. With a
   per-utterance length, bin k would mean a different frequency (k / n_i cycles per frame) for each
   utterance and the bin-wise comparison below would compare unlike things. With a common n, bin k is
   the frequency k / n for everyone; a shorter utterance is simply zero-extended.
3. Only the first ``K = min(num_bins, n // 2 + 1)`` bins are kept: the low frequencies, i.e. the slow
   envelope of each feature trajectory (the paper motivates the frequency branch with envelope
   structure). Bin 0 is the sum over valid frames, an un-normalised mean pooling.
4. ``M_i[k]`` is then a complex vector in C^D. VecSim per bin (Eq. 7):
   ``Re(sum_d u_d conj(v_d)) / (|u| |v|)``; the similarity of utterances i and j is the mean of the
   per-bin VecSim over the K bins. A bin vector whose norm is at most ``rel_eps`` (1e-6, above float32
   FFT round-off) times the utterance's largest kept bin norm (so every bin of an all-zero or fully
   masked utterance, or a constant trajectory's upper bins) is treated as the zero direction:
   similarity 0 and zero gradient. Adding an eps to the denominator instead would give such a vector
   a gradient of about 1/eps (1e8 for eps = 1e-8), which overflows fp16 gradients and swamps the rest
   of the batch; a relative rather than absolute threshold keeps the similarity scale-invariant.

Why per bin: by Parseval, the complex cosine of two complete, unfiltered spectra equals the plain
time-domain cosine of the (zero-padded) sequences, so a single "global" complex cosine would add
nothing over a real cosine. Normalising each low bin separately and averaging compares the spectral
envelopes bin by bin, which is not equivalent to any time-domain cosine (tests/test_losses.py
demonstrates both facts).

Reading of Eq. 8
----------------
Positives of anchor i are the other utterances with the same label (SupCon style):
``loss_i = -mean_{p in P(i)} log(exp(s_ip / tau) / sum_{j != i} exp(s_ij / tau))``. The denominator runs
over every j != i, positives included: the loss is then bounded below by 0 and stays defined when a
batch has no negative at all. Anchors with no positive are skipped; if no anchor has one, the loss is
a zero still attached to the graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tfmamba.errors import ConfigError

__all__ = ["CMDTLoss", "cmdt_loss", "spectral_similarity", "total_loss", "vec_sim"]

_EPS = 1e-8
_REL_EPS = 1e-6


def _check_hparams(temperature: float, num_bins: int) -> None:
    """Reject a non-positive or non-finite temperature and a bin count below 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise ConfigError(f"num_bins must be an integer >= 1, got {num_bins!r}")
    if num_bins < 1:
        raise ConfigError(f"num_bins must be >= 1, got {num_bins}")


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else, fp16/bf16 included, is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _unit(x: Tensor, dim: int, squared_floor: Tensor | float) -> Tensor:
    """``x / |x|`` along ``dim`` (real x); a vector with ``|x|^2 <= squared_floor`` becomes 0, zero grad."""
    squared = x.pow(2).sum(dim=dim, keepdim=True)
    kept = squared > squared_floor
    norm = torch.where(kept, squared, torch.ones_like(squared)).sqrt()
    return torch.where(kept, x / norm, torch.zeros_like(x))


def _as_real(x: Tensor, dim: int) -> Tensor:
    """Real and imaginary parts stacked along ``dim``: Re(u . conj(v)) is then a real dot product."""
    return torch.cat([x.real, x.imag], dim=dim) if x.is_complex() else x


def vec_sim(u: Tensor, v: Tensor, dim: int = -1, eps: float = _EPS) -> Tensor:
    """VecSim of Eq. 7: ``Re(sum u * conj(v)) / (|u| |v|)`` along ``dim`` (real or complex input).

    The ordinary cosine similarity for real vectors; a vector of norm <= eps counts as similarity 0.
    """
    floor = eps * eps
    return (_unit(_as_real(u, dim), dim, floor) * _unit(_as_real(v, dim), dim, floor)).sum(dim=dim)


def _check_inputs(sequence: Tensor, mask: Tensor) -> None:
    """Shape checks shared by the similarity and the loss."""
    if sequence.dim() != 3:
        raise ValueError(f"sequence must be (batch, frames, dim), got shape {tuple(sequence.shape)}")
    batch, frames, dim = sequence.shape
    if batch == 0 or frames == 0 or dim == 0:
        raise ValueError(f"sequence must be non-empty in every axis, got shape {tuple(sequence.shape)}")
    if not sequence.is_floating_point():
        raise ValueError(f"sequence must be a floating-point tensor, got {sequence.dtype}")
    if tuple(mask.shape) != (batch, frames):
        raise ValueError(f"mask must be (batch, frames) = {(batch, frames)}, got {tuple(mask.shape)}")


def _masked(sequence: Tensor, mask: Tensor) -> Tensor:
    """The sequence in the compute dtype with padded frames set to 0 (whatever they held, NaN included)."""
    x = sequence.to(_compute_dtype(sequence))
    keep = mask.to(device=x.device, dtype=torch.bool).unsqueeze(-1)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def spectral_similarity(
    sequence: Tensor, mask: Tensor, num_bins: int = 16, rel_eps: float = _REL_EPS
) -> Tensor:
    """(B, B) similarities: mean over the K lowest rFFT bins of the per-bin VecSim (module docstring).

    Bins weaker than ``rel_eps`` times the utterance's strongest kept bin count as zero vectors.
    Computed in float32 (float64 if the input is float64) whatever the input precision.
    """
    _check_inputs(sequence, mask)
    _check_hparams(1.0, num_bins)
    if not 0.0 <= rel_eps < 1.0:
        raise ConfigError(f"rel_eps must be in [0, 1), got {rel_eps}")
    return _spectral_similarity(_masked(sequence, mask), num_bins, rel_eps)


def _spectral_similarity(x: Tensor, num_bins: int, rel_eps: float) -> Tensor:
    """`spectral_similarity` of an already masked sequence in the compute dtype, arguments checked by the caller."""
    frames = x.shape[1]
    num_kept = min(num_bins, frames // 2 + 1)
    spectrum = torch.fft.rfft(x, n=frames, dim=1)[:, :num_kept]  # (B, K, D) complex
    # Re(u . conj(v)) = u_re . v_re + u_im . v_im: normalise the stacked real and imaginary parts.
    parts = _as_real(spectrum, -1)  # (B, K, 2D)
    strongest = parts.detach().pow(2).sum(dim=-1, keepdim=True).amax(dim=1, keepdim=True)  # (B, 1, 1)
    units = _unit(parts, dim=-1, squared_floor=rel_eps * rel_eps * strongest)
    per_bin = torch.einsum("ikd,jkd->kij", units, units)  # (K, B, B)
    return per_bin.mean(dim=0)


def cmdt_loss(
    sequence: Tensor,
    mask: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    num_bins: int = 16,
) -> Tensor:
    """Complex Metric-Distance Triplet loss (Eq. 7-8), a scalar; the paper adds it as ``lambda * L_CMDT``
    to cross-entropy (Eq. 9, see `total_loss`).

    ``sequence`` (B, L, D) is the TF-Mamba block output per frame, ``mask`` (B, L) True on valid frames,
    ``labels`` (B,) integer classes. Same-label utterances are the positives, the denominator runs over
    all other utterances (module docstring). Never NaN for a batch of one, a single class, a singleton
    class, an all-zero utterance or half-precision input; returns a graph-connected zero when no anchor
    has a positive.
    """
    _check_hparams(temperature, num_bins)
    return _cmdt_loss(sequence, mask, labels, temperature, num_bins)


def _cmdt_loss(sequence: Tensor, mask: Tensor, labels: Tensor, temperature: float, num_bins: int) -> Tensor:
    """`cmdt_loss` with `temperature` and `num_bins` already checked (by the caller, once)."""
    _check_inputs(sequence, mask)
    if labels.dim() != 1 or labels.shape[0] != sequence.shape[0]:
        raise ValueError(f"labels must be (batch,) = ({sequence.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")

    batch = sequence.shape[0]
    labels = labels.to(sequence.device)
    not_self = ~torch.eye(batch, dtype=torch.bool, device=sequence.device)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & not_self
    num_pos = positives.sum(dim=1)
    has_pos = num_pos > 0
    # No data-dependent branch: whether any anchor has a positive is never read on the host (no GPU sync).
    logits = _spectral_similarity(_masked(sequence, mask), num_bins, _REL_EPS) / temperature  # (B, B), finite
    # Self-pairs get a logit far below any real one (|logits| <= 1 / temperature): exp() of it is 0, as for
    # -inf, yet an anchor with no other utterance (a batch of one) keeps a finite value and gradient.
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, -4.0 / temperature - 1e4), dim=1)  # (B,)
    mean_pos_logit = (logits * positives).sum(dim=1) / num_pos.clamp_min(1)
    per_anchor = torch.where(has_pos, log_denominator - mean_pos_logit, torch.zeros_like(log_denominator))
    return per_anchor.sum() / has_pos.sum().clamp_min(1)


def total_loss(ce: Tensor, cmdt: Tensor, weight: float) -> Tensor:
    """Eq. 9: ``L_SER = L_CE + lambda * L_CMDT`` with ``lambda = weight >= 0`` (checked where it enters: the
    `TrainConfig`'s `cmdt_weight`, not on every step)."""
    return ce + weight * cmdt


class CMDTLoss(nn.Module):
    """`cmdt_loss` as a module, holding ``temperature`` and ``num_bins``."""

    def __init__(self, temperature: float = 0.1, num_bins: int = 16) -> None:
        super().__init__()
        _check_hparams(temperature, num_bins)
        self.temperature = float(temperature)
        self.num_bins = num_bins

    def forward(self, sequence: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        """The CMDT loss of a batch (see `cmdt_loss`); the settings were checked once, when the module was built."""
        return _cmdt_loss(sequence, mask, labels, self.temperature, self.num_bins)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, num_bins={self.num_bins}"
