"""Tests for tfmamba.losses: the CMDT loss (Eq. 7-8), its spectral similarity, and Eq. 9."""

from __future__ import annotations

import math

import pytest
import torch

from tfmamba.errors import ConfigError
from tfmamba.losses import CMDTLoss, cmdt_loss, spectral_similarity, total_loss, vec_sim


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sequence = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # a
            [[1.0, 0.0], [5.0, 7.0]],  # b, second frame is padding (garbage)
            [[0.0, 1.0], [1.0, 0.0]],  # c
        ],
        dtype=torch.float64,
    )
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    labels = torch.tensor([0, 0, 1])
    return sequence, mask, labels


def test_hand_computed_small_case() -> None:
    # n = L = 2, so rfft has 2 bins, both real: bin0 = x0 + x1, bin1 = x0 - x1; K = min(16, 2) = 2.
    #   a: bin0 = [1, 1], bin1 = [1, -1]
    #   b: (padding zeroed) bin0 = [1, 0], bin1 = [1, 0]
    #   c: bin0 = [1, 1], bin1 = [-1, 1]
    # Per-bin cosines, averaged over the 2 bins:
    #   s_ab = (1/sqrt2 + 1/sqrt2) / 2 = 1/sqrt2
    #   s_ac = (1 + (-1)) / 2 = 0
    #   s_bc = (1/sqrt2 + (-1/sqrt2)) / 2 = 0
    # labels a=0, b=0, c=1, tau = 0.5 -> logits s/tau: ab = sqrt2, ac = 0, bc = 0.
    #   anchor a: P = {b}, denominator over {b, c}: -log(e^sqrt2 / (e^sqrt2 + 1)) = log(1 + e^-sqrt2)
    #   anchor b: P = {a}, denominator over {a, c}: same value
    #   anchor c: no positive, skipped
    # loss = log(1 + e^-sqrt2) ~= 0.2176.
    sequence, mask, labels = _hand_batch()
    sim = spectral_similarity(sequence, mask)
    expected_sim = torch.tensor(
        [[1.0, 1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(sim, expected_sim, atol=1e-6, rtol=0)
    loss = cmdt_loss(sequence, mask, labels, temperature=0.5)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(math.log1p(math.exp(-math.sqrt(2))), abs=1e-6)


def test_parseval_global_cosine_is_time_cosine_but_per_bin_mean_is_not() -> None:
    gen = torch.Generator().manual_seed(2)
    frames, dim = 12, 5
    sequence = torch.randn(2, frames, dim, generator=gen, dtype=torch.float64)
    sequence[1] = sequence[0] + 0.7 * sequence[1]  # correlated, so the cosines are far from 0
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, 9:] = False
    padded = sequence * mask.unsqueeze(-1)

    # Full, unfiltered spectra as one complex vector each: their complex cosine equals the time cosine.
    spectra = torch.fft.fft(padded, n=frames, dim=1)
    global_complex = vec_sim(spectra[0].flatten(), spectra[1].flatten(), eps=0.0)
    time_cosine = torch.nn.functional.cosine_similarity(padded[0].flatten(), padded[1].flatten(), dim=0)
    torch.testing.assert_close(global_complex, time_cosine, atol=1e-12, rtol=0)

    # The per-bin cosines averaged over bins (all rfft bins, or only the low ones) are another quantity.
    for num_bins in (frames // 2 + 1, 3):
        per_bin_mean = spectral_similarity(sequence, mask, num_bins=num_bins)[0, 1]
        assert abs(per_bin_mean.item() - time_cosine.item()) > 1e-2


def test_spectral_similarity_matches_per_bin_vec_sim_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    sequence = torch.randn(3, 10, 4, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    spectra = torch.fft.rfft(sequence * mask.unsqueeze(-1), n=10, dim=1)[:, :4]
    expected = torch.empty(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            expected[i, j] = torch.stack([vec_sim(spectra[i, k], spectra[j, k]) for k in range(4)]).mean()
    torch.testing.assert_close(spectral_similarity(sequence, mask, num_bins=4), expected)


def test_num_bins_is_capped_at_rfft_size() -> None:
    sequence, mask, _ = _hand_batch()
    capped = spectral_similarity(sequence, mask, num_bins=2)
    torch.testing.assert_close(spectral_similarity(sequence, mask, num_bins=100), capped)


def test_padded_frame_content_is_ignored() -> None:
    gen = torch.Generator().manual_seed(2)
    sequence = torch.randn(4, 9, 3, generator=gen)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[0, 5:] = False
    mask[3, 2:] = False
    labels = torch.tensor([0, 1, 0, 1])
    reference = cmdt_loss(sequence, mask, labels)
    garbage = sequence.clone()
    garbage[0, 5:] = 1e6
    garbage[3, 2:] = float("nan")
    garbage[3, 4] = float("inf")
    torch.testing.assert_close(cmdt_loss(garbage, mask, labels), reference)


def test_padding_frames_equal_explicit_zero_frames_at_same_batch_length() -> None:
    # Utterance 0 has 5 valid frames. Given as 5 frames + 3 masked padded frames, or as the same 5 frames
    # followed by 3 real zero frames with an all-True mask, the batch length n = 8 is the same, so the
    # spectra and the loss are the same: only the valid frames and n matter.
    gen = torch.Generator().manual_seed(3)
    sequence = torch.randn(3, 8, 4, generator=gen)
    labels = torch.tensor([1, 1, 0])
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 5:] = False
    padded = sequence.clone()
    padded[0, 5:] = torch.randn(3, 4, generator=gen)
    zeros = sequence.clone()
    zeros[0, 5:] = 0.0
    full_mask = torch.ones(3, 8, dtype=torch.bool)
    torch.testing.assert_close(cmdt_loss(padded, mask, labels), cmdt_loss(zeros, full_mask, labels))


def _assert_finite_loss_and_grad(
    sequence: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    leaf = sequence.clone().requires_grad_(True)
    loss = cmdt_loss(leaf, mask, labels)
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad).all()
    return loss.detach()


def test_batch_of_one_is_graph_connected_zero() -> None:
    mask = torch.tensor([[True, True, True, False, False]])
    sequence = torch.randn(1, 5, 3)
    sequence[0, 3:] = float("nan")  # padding garbage must not leak into the zero either
    loss = _assert_finite_loss_and_grad(sequence, mask, torch.tensor([2]))
    assert loss.item() == 0.0


def test_all_labels_distinct_is_zero() -> None:
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss = _assert_finite_loss_and_grad(torch.randn(3, 5, 3), mask, torch.arange(3))
    assert loss.item() == 0.0


def test_single_class_batch_is_finite_and_non_negative() -> None:
    loss = _assert_finite_loss_and_grad(
        torch.randn(4, 6, 3), torch.ones(4, 6, dtype=torch.bool), torch.zeros(4, dtype=torch.long)
    )
    assert loss.item() >= 0.0


def test_singleton_class_is_skipped_as_anchor() -> None:
    gen = torch.Generator().manual_seed(4)
    sequence = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    labels = torch.tensor([0, 0, 1])
    _assert_finite_loss_and_grad(sequence, mask, labels)
    logits = spectral_similarity(sequence, mask) / 0.1
    expected = torch.stack(
        [torch.logsumexp(logits[i, [j for j in range(3) if j != i]], 0) - logits[i, 1 - i] for i in (0, 1)]
    ).mean()
    torch.testing.assert_close(cmdt_loss(sequence, mask, labels), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ["zero_features", "fully_masked"])
def test_all_zero_utterance_has_zero_similarity_and_gradient(case: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(9)
    sequence = torch.randn(4, 6, 3, generator=gen)
    mask = torch.ones(4, 6, dtype=torch.bool)
    if case == "zero_features":
        sequence[1] = 0.0
    else:
        mask[1] = False
    leaf = sequence.to(dtype).requires_grad_(True)
    loss = cmdt_loss(leaf, mask, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(leaf.grad).all()
    # The zero utterance is the zero direction: similarity 0 to everyone, no gradient, and no ~1/eps
    # blow-up of the other utterances' gradients (the fp16 case would overflow to inf).
    assert spectral_similarity(sequence, mask)[1].abs().max().item() == 0.0
    assert leaf.grad[1].abs().max().item() == 0.0
    assert leaf.grad.abs().max().item() < 1e3


def test_similarity_is_scale_invariant_per_utterance() -> None:
    gen = torch.Generator().manual_seed(10)
    sequence = torch.randn(4, 8, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 8, dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1])
    scaled = sequence * torch.tensor([1e-6, 1.0, 1e3, 7.0], dtype=torch.float64).view(4, 1, 1)
    torch.testing.assert_close(cmdt_loss(scaled, mask, labels), cmdt_loss(sequence, mask, labels))


def test_constant_trajectory_upper_bins_count_as_zero() -> None:
    # A constant trajectory has energy only in bin 0; its other bins hold float32 FFT round-off, which
    # must not be normalised into a random unit direction.
    sequence = torch.ones(2, 8, 3) * torch.tensor([1.0, 2.0, 3.0])
    mask = torch.ones(2, 8, dtype=torch.bool)
    sim = spectral_similarity(sequence, mask, num_bins=5)
    torch.testing.assert_close(sim, torch.full((2, 2), 1 / 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    sequence = torch.randn(4, 7, 3, generator=gen).to(dtype)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[2, 4:] = False
    labels = torch.tensor([0, 1, 0, 1])
    loss = _assert_finite_loss_and_grad(sequence, mask, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, cmdt_loss(sequence.float(), mask, labels))


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(6)
    sequence = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, False, False]])
    labels = torch.tensor([0, 0, 1])
    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return cmdt_loss(x, mask, labels, temperature=0.5, num_bins=2)

    assert torch.autograd.gradcheck(loss_of, (sequence,))


def test_loss_falls_when_same_class_samples_are_more_similar() -> None:
    gen = torch.Generator().manual_seed(7)
    sequence = torch.randn(6, 10, 4, generator=gen)
    mask = torch.ones(6, 10, dtype=torch.bool)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    prototypes = torch.stack([sequence[labels == c].mean(0) for c in (0, 1)])
    losses = []
    for alpha in (0.0, 0.5, 0.9):
        pulled = (1 - alpha) * sequence + alpha * prototypes[labels]
        losses.append(cmdt_loss(pulled, mask, labels).item())
    assert losses[0] > losses[1] > losses[2]


def test_gradient_step_lowers_loss() -> None:
    gen = torch.Generator().manual_seed(8)
    sequence = torch.randn(6, 8, 4, generator=gen, requires_grad=True)
    mask = torch.ones(6, 8, dtype=torch.bool)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = cmdt_loss(sequence, mask, labels)
    before.backward()
    with torch.no_grad():
        after = cmdt_loss(sequence - 0.05 * sequence.grad, mask, labels)
    assert after < before


def test_module_matches_function_and_total_loss() -> None:
    sequence, mask, labels = _hand_batch()
    module = CMDTLoss(temperature=0.5, num_bins=2)
    assert module.temperature == 0.5 and module.num_bins == 2
    torch.testing.assert_close(module(sequence, mask, labels), cmdt_loss(sequence, mask, labels, 0.5, 2))
    ce = torch.tensor(1.5)
    assert total_loss(ce, torch.tensor(0.5), 0.2).item() == pytest.approx(1.6)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_raises_config_error(temperature: float) -> None:
    sequence, mask, labels = _hand_batch()
    with pytest.raises(ConfigError, match="temperature"):
        cmdt_loss(sequence, mask, labels, temperature=temperature)
    with pytest.raises(ConfigError, match="temperature"):
        CMDTLoss(temperature=temperature)


def test_bad_arguments_raise() -> None:
    sequence, mask, labels = _hand_batch()
    with pytest.raises(ConfigError, match="num_bins"):
        cmdt_loss(sequence, mask, labels, num_bins=0)
    with pytest.raises(ConfigError, match="rel_eps"):
        spectral_similarity(sequence, mask, rel_eps=-1.0)
    with pytest.raises(ValueError, match="sequence"):
        cmdt_loss(sequence[0], mask, labels)
    with pytest.raises(ValueError, match="mask"):
        cmdt_loss(sequence, mask[:, :1], labels)
    with pytest.raises(ValueError, match="labels"):
        cmdt_loss(sequence, mask, labels[:2])
    with pytest.raises(ValueError, match="integer"):
        cmdt_loss(sequence, mask, labels.double())
