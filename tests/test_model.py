"""TF-Mamba variants: parameter budgets, padding invariance, shapes, config validation, the params command."""

from __future__ import annotations

import pytest
import torch

from tfmamba.cli import main
from tfmamba.errors import ConfigError
from tfmamba.model import VARIANTS, ModelConfig, build_model, count_parameters
from tfmamba.modules.frequency_filter import DFT_MAX_FRAMES, FrequencyFilter, fourier_bases, set_filter_modes
from tfmamba.modules.mamba2 import FrequencyBranch, TemporalBranch
from tfmamba.paper import paper_params

SMALL = dict(d_model=32, d_state=8, headdim=16, num_heads=4, ffn_dim=24, chunk_size=8, classifier_dims=(24, 16))


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_within_5_percent_of_paper(variant):
    model = build_model(variant, num_classes=4, input_dim=1024)
    ours, paper = count_parameters(model), paper_params(variant)
    assert abs(ours - paper) / paper < 0.05, (variant, ours, paper)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_never_changes_a_valid_utterance(variant):
    torch.manual_seed(0)
    model = build_model(variant, num_classes=3, input_dim=20, **SMALL).eval()
    lengths = torch.tensor([29, 17, 3, 11])
    x = torch.randn(4, 29, 20)
    x[1, 17:] = 100.0  # garbage in the padding must not leak into the valid frames
    with torch.no_grad():
        batched = model(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(x[i : i + 1, :n], lengths[i : i + 1])
            assert torch.allclose(alone.logits, batched.logits[i : i + 1], atol=1e-5), (variant, i)
    assert batched.logits.shape == (4, 3)
    assert batched.sequence.shape == (4, 29, 32)
    assert not batched.sequence[~batched.mask].any(), "padded frames of the sequence must be zero"


def test_full_size_padding_invariance_of_the_tf_model():
    torch.manual_seed(0)
    model = build_model("tf").eval()
    x, lengths = torch.randn(2, 40, 1024), torch.tensor([40, 13])
    with torch.no_grad():
        batched = model(x, lengths).logits
        alone = model(x[1:, :13], lengths[1:]).logits
    assert torch.allclose(alone, batched[1:], atol=1e-5)


def test_variants_fill_the_block_slots_as_documented():
    def slots(variant):
        block = build_model(variant, input_dim=20, **SMALL).block
        return None if block is None else (type(block.first), type(block.second))

    assert slots("baseline") is None and slots("attention") is None
    assert slots("temporal") == (TemporalBranch, type(None))
    assert slots("tf") == slots("tf_cmdt") == (TemporalBranch, FrequencyBranch)
    assert slots("dual_temporal") == (TemporalBranch, TemporalBranch)
    assert build_model("baseline", input_dim=20, **SMALL).encoder is None


def test_training_step_gives_finite_gradients_everywhere():
    torch.manual_seed(0)
    model = build_model("tf", num_classes=4, input_dim=20, **SMALL)
    out = model(torch.randn(3, 21, 20), torch.tensor([21, 9, 14]))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    filt = model.block.second.xbc_filter
    assert filt.omega_raw.grad.abs().sum() > 0, "the filter threshold omega must be learnable"
    assert filt.head[2].weight.grad.abs().sum() > 0, "the head that conditions omega on the spectrum must learn"


def test_frequency_branch_filters_the_projection_itself_without_conv_by_default():
    """Eq. 2 puts the 1D conv + SiLU in the temporal module only; Eq. 3 takes the FFT of Split(Phi^F)."""
    torch.manual_seed(0)
    model = build_model("tf", input_dim=20, **SMALL)
    temporal, frequency = model.block.first, model.block.second
    assert temporal.conv1d is not None and frequency.conv1d is None
    assert not any("conv1d" in name for name, _ in frequency.named_parameters())
    seen = {}
    frequency.xbc_filter.register_forward_pre_hook(lambda module, args: seen.setdefault("xbc", args[0]))
    u = torch.randn(2, 13, 32)
    frequency(u, torch.tensor([13, 8]))
    _, xbc, _ = torch.split(frequency.in_proj(u), [frequency.d_inner, frequency.conv_dim, frequency.nheads], dim=-1)
    assert torch.equal(seen["xbc"], xbc), "the filter must see the projection's [x, B, C], not a conv output"
    old = build_model("tf", input_dim=20, freq_conv=True, **SMALL).block.second
    assert old.conv1d is not None, "freq_conv=True keeps the earlier form"


def test_omega_is_learned_from_each_utterance_spectrum():
    torch.manual_seed(0)
    filt = FrequencyFilter(6, filter_init=0.3, hidden=4)
    quiet, loud = torch.randn(1, 40, 6), 10 * torch.randn(1, 40, 6)
    spectra = [torch.log(torch.fft.rfft(x, dim=1, norm="ortho").abs() ** 2 + 1e-8) for x in (quiet, loud)]
    # at initialisation omega is filter_init for every input, as with a fixed threshold
    for log_power in spectra:
        assert torch.allclose(filt.log_threshold(log_power).exp(), torch.full((1, 1, 6), 0.3), atol=1e-6)
    with torch.no_grad():
        filt.head[2].weight.normal_()
    assert not torch.allclose(filt.log_threshold(spectra[0]), filt.log_threshold(spectra[1]))
    # one step of gradient descent reaches every part of the threshold through the soft mask
    filt.zero_grad()
    filt(quiet).square().sum().backward()
    for name, p in filt.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert FrequencyFilter(6, hidden=0).head is None


def test_frequency_branch_has_the_paper_margin_over_a_temporal_one():
    """Table III: 20.79 M (tf) vs 20.77 M (dual_temporal), so F has 0.01-0.03 M more parameters than T."""
    gap = count_parameters(build_model("tf")) - count_parameters(build_model("dual_temporal"))
    assert 10_000 <= gap <= 30_000, gap
    legacy = count_parameters(build_model("tf", freq_conv=True, filter_hidden=0))
    assert legacy - count_parameters(build_model("dual_temporal")) == 2304, "a fixed omega per channel: +0.002 M only"


def test_saved_configs_without_the_new_keys_describe_the_earlier_branch():
    new = ModelConfig(input_dim=20, **SMALL).to_dict()
    config = ModelConfig.from_saved({k: v for k, v in new.items() if k not in ("freq_conv", "filter_hidden")})
    assert (config.freq_conv, config.filter_hidden) == (True, 0)
    assert ModelConfig.from_saved(ModelConfig(input_dim=20, **SMALL).to_dict()) == ModelConfig(input_dim=20, **SMALL)


def test_frequency_filter_soft_mask_tends_to_the_hard_mask():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5)
    filt = FrequencyFilter(5, filter_init=1.0, sharpness=1e4)
    spec = torch.fft.rfft(x, dim=1, norm="ortho")
    hard = torch.fft.irfft(spec * (spec.abs() ** 2 > 1.0), n=32, dim=1, norm="ortho")
    assert torch.allclose(filt(x), hard, atol=1e-4)
    assert torch.allclose(filt.omega, torch.full((5,), 1.0), atol=1e-6)


def test_frequency_filter_uses_each_utterance_own_length():
    torch.manual_seed(0)
    filt = FrequencyFilter(4, filter_init=0.5)
    x = torch.randn(2, 16, 4)
    out = filt(x, torch.tensor([16, 9]))
    assert torch.allclose(out[1, :9], filt(x[1:, :9])[0], atol=1e-6)
    assert not out[1, 9:].any()


def test_fourier_bases_are_each_rows_own_rfft_and_irfft():
    """The batched DFT's matrices against torch.fft on each row's own frames: odd and even lengths, one frame."""
    torch.manual_seed(0)
    lengths = torch.tensor([12, 7, 1, 2, 10])
    forward, inverse, bins = fourier_bases(lengths, 12)
    x = torch.randn(len(lengths), 12, 3, dtype=torch.float64)
    spec = forward.double() @ x
    for i, n in enumerate(lengths.tolist()):
        reference = torch.fft.rfft(x[i, :n], dim=0, norm="ortho")
        k = n // 2 + 1
        assert torch.allclose(spec[i, :k], reference.real, atol=1e-5)
        assert torch.allclose(spec[i, 7 : 7 + k], reference.imag, atol=1e-5)
        assert not spec[i, k:7].any() and not spec[i, 7 + k :].any(), "bins past a row's own are zero"
        assert bins[i, :, 0].tolist() == [1.0] * k + [0.0] * (7 - k)
        # irfft ignores the imaginary parts of bin 0 (and of bin n/2 for an even n): so must the inverse
        back = (inverse[i].double() @ spec[i])[:n]
        assert torch.allclose(back, torch.fft.irfft(reference, n=n, dim=0, norm="ortho"), atol=1e-5)
        assert torch.allclose(back, x[i, :n], atol=1e-5)
        assert not inverse[i, n:].any(), "frames past a row's length get nothing"


@pytest.mark.parametrize("hidden", [0, 4])
def test_padded_batch_filters_the_same_grouped_and_as_one_dft(hidden):
    """Both ways of filtering a padded batch give the same outputs, and gradients as close to a float64
    reference as each other (a one-frame clip included: its single bin has std 0)."""
    torch.manual_seed(0)
    filt = FrequencyFilter(6, filter_init=0.3, hidden=hidden)
    if filt.head is not None:
        torch.nn.init.normal_(filt.head[2].weight, std=0.5)
    lengths = torch.tensor([19, 1, 2, 18, 7, 19, 12])
    x = torch.randn(len(lengths), 19, 6)
    x[3, 18:] = 50.0  # padding that must not leak
    weights = torch.randn(len(lengths), 19, 6, dtype=torch.float64)

    def run(mode: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        module = filt.to(dtype)
        xi = x.to(dtype, copy=True).requires_grad_()
        if dtype == torch.float64:  # each row alone through the float64 transform (forward casts to float32)
            out = torch.zeros_like(xi)
            for i, n in enumerate(lengths.tolist()):
                out[i, :n] = module._filter(xi[i : i + 1, :n])[0]
        else:
            module.padded = mode
            out = module(xi, lengths)
        (out.double() * weights).sum().backward()
        module.zero_grad()
        return out.detach().double(), xi.grad.double()

    reference, reference_grad = run("each row", torch.float64)
    (out_g, dx_g), (out_d, dx_d) = run("grouped", torch.float32), run("dft", torch.float32)
    assert torch.allclose(out_g, out_d, atol=1e-5) and torch.allclose(out_d, reference, atol=1e-5)
    assert not out_d[3, 18:].any()
    assert torch.isfinite(dx_g).all() and torch.isfinite(dx_d).all()
    error_g, error_d = (dx_g - reference_grad).abs().max(), (dx_d - reference_grad).abs().max()
    assert error_d <= 2 * error_g + 1e-5, (error_d, error_g)


def test_padded_dft_under_bf16_autocast_stays_close_to_float32():
    """Under bf16 autocast (a GPU's AMP; the CPU's here) the DFT's matmuls run in bf16: within bf16's precision."""
    torch.manual_seed(0)
    filt = FrequencyFilter(16, filter_init=0.3, hidden=4)
    filt.padded = "dft"
    lengths = torch.tensor([300, 171, 244, 97])
    x = torch.randn(4, 300, 16)
    reference = filt(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = filt(x.bfloat16(), lengths)
    assert low.dtype == torch.bfloat16
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error < 2e-2, error


def test_auto_filters_a_mixed_length_batch_of_training_length_as_one_dft():
    filt = FrequencyFilter(4)
    mixed, same = torch.tensor([30, 12, 30]), torch.tensor([12, 12])
    assert filt.padded_mode(mixed, 30) == "dft"
    assert filt.padded_mode(same, 30) == "grouped", "one length is one group"
    assert filt.padded_mode(mixed, 5000) == "grouped", "n^2 work past DFT_MAX_FRAMES"
    filt.padded = "grouped"
    assert filt.padded_mode(mixed, 30) == "grouped"
    with pytest.raises(ValueError, match="unknown padded-batch filter mode"):
        set_filter_modes(filt, padded="fast")


@pytest.mark.parametrize("frames", [37, 64])  # an odd length and an even one (bin n/2 counted once)
def test_unpadded_batch_filters_the_same_as_an_fft_and_as_one_dft(frames):
    """One DFT basis for every row of a batch with nothing padded: the FFT's outputs, and gradients as close to a
    float64 reference as the FFT's."""
    torch.manual_seed(0)
    filt = FrequencyFilter(16, filter_init=0.3, hidden=4)
    torch.nn.init.normal_(filt.head[2].weight, std=0.5)
    x = torch.randn(4, frames, 16)
    weights = torch.randn(4, frames, 16, dtype=torch.float64)

    def run(mode: str, dtype: torch.dtype) -> list[torch.Tensor]:
        module = filt.to(dtype)
        set_filter_modes(module, unpadded=mode)
        xi = x.to(dtype, copy=True).requires_grad_()
        out = module._filter(xi) if dtype == torch.float64 else module(xi)  # forward computes in float32
        (out.double() * weights).sum().backward()
        grads = [xi.grad, module.omega_raw.grad, module.head[0].weight.grad]
        results = [out.detach().double()] + [g.detach().double().clone() for g in grads]
        module.zero_grad()
        return results

    reference = run("fft", torch.float64)
    fft, dft = run("fft", torch.float32), run("dft", torch.float32)
    torch.testing.assert_close(dft[0], fft[0], rtol=0, atol=1e-5)
    for name, want, a, b in zip(["x", "omega", "head"], reference[1:], fft[1:], dft[1:]):
        error_fft, error_dft = (a - want).abs().max(), (b - want).abs().max()
        assert error_dft <= 2 * error_fft + 1e-5, (name, error_dft, error_fft)


def test_auto_filters_an_unpadded_batch_as_one_dft_only_under_compile():
    """Eagerly the FFT; in a compiled graph the DFT (no complex numbers for Inductor), up to DFT_MAX_FRAMES."""
    filt = FrequencyFilter(4)
    graphs = []

    def record(graph, example_inputs):
        graphs.append(graph.code)
        return graph.forward

    def transforms(frames: int) -> str:
        torch._dynamo.reset()
        graphs.clear()
        torch.compile(filt, backend=record, fullgraph=True)(torch.randn(2, frames, 4))
        return "fft" if "rfft" in graphs[0] else "dft" if "matmul" in graphs[0] else "neither"

    assert filt.unpadded_mode(30) == "fft"
    assert transforms(30) == "dft"
    assert transforms(DFT_MAX_FRAMES + 2) == "fft", "n^2 work past DFT_MAX_FRAMES"
    set_filter_modes(filt, unpadded="fft")
    assert filt.unpadded_mode(30) == "fft" and transforms(30) == "fft"
    with pytest.raises(ValueError, match="unknown unpadded-batch filter mode"):
        set_filter_modes(filt, unpadded="grouped")


def test_training_step_of_the_model_is_the_same_with_either_padded_filter():
    torch.manual_seed(0)
    model = build_model("tf_cmdt", num_classes=3, input_dim=20, **SMALL).train()
    _randomise_filter_heads(model)
    x, lengths = torch.randn(4, 23, 20), torch.tensor([23, 9, 16, 4])
    grads = {}
    for mode in ("grouped", "dft"):
        set_filter_modes(model, padded=mode)
        torch.manual_seed(1)  # the same dropout masks
        model.zero_grad()
        out = model(x, lengths)
        out.logits.square().sum().backward()
        grads[mode] = (out.logits.detach(), [q.grad.clone() for q in model.parameters() if q.grad is not None])
    assert torch.allclose(grads["grouped"][0], grads["dft"][0], atol=1e-5)
    for a, b in zip(grads["grouped"][1], grads["dft"][1]):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max().clamp_min(1.0)


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(variant="tf_plus"), "unknown variant"),
        (dict(d_state=0), "d_state must be >= 1"),
        (dict(filter_init=-1.0), "filter_init"),
        (dict(headdim=48), "multiple of headdim"),
        (dict(ssd_backend="cuda"), "ssd_backend"),
        (dict(dstate=16), "unknown model setting"),
    ],
)
def test_bad_config_values_raise_config_error(override, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict({"input_dim": 20, **SMALL, **override})


def test_config_round_trip():
    cfg = ModelConfig(variant="dual_temporal", input_dim=80, **SMALL)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_params_command_prints_every_variant(capsys):
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    for variant in VARIANTS:
        assert variant in out
    assert "20.79M" in out
    assert "(tf - dual_temporal): 18,436 (paper: 0.02M)" in out


def _randomise_filter_heads(model):
    """Give every frequency filter's omega head non-zero weights, so the paths below exercise it."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrequencyFilter) and module.head is not None:
                module.head[2].weight.normal_(std=0.5)


@pytest.mark.parametrize("variant", ["tf", "dual_temporal", "temporal", "attention"])
def test_inference_fast_path_matches_the_batched_masked_path(variant):
    """Without autograd on a CPU the model runs each utterance alone, unmasked, with the block's folded
    projections and in-place SSD and filter; with autograd, the padded batch at once with masks. Same outputs."""
    torch.manual_seed(0)
    model = build_model(variant, num_classes=3, input_dim=20, **SMALL).eval()
    _randomise_filter_heads(model)
    x = torch.randn(3, 37, 20)
    for lengths in (torch.tensor([37, 37, 37]), torch.tensor([37, 20, 5])):
        reference = model(x, lengths)
        with torch.no_grad():
            fast = model(x, lengths)
        assert torch.allclose(fast.logits, reference.logits.detach(), atol=1e-5), (variant, lengths)
        assert torch.allclose(fast.sequence, reference.sequence.detach(), atol=1e-5), (variant, lengths)
        assert torch.equal(fast.mask, reference.mask)


@pytest.mark.parametrize("variant", ["tf", "dual_temporal", "temporal", "attention"])
def test_inference_fast_path_runs_under_bf16_autocast(variant):
    """Evaluation on a GPU runs the no-autograd path under bf16 autocast (CPU autocast here): the folded block adds
    the branches' bf16 products into its float32 residual. Within bf16's precision of the autograd path's result."""
    torch.manual_seed(0)
    model = build_model(variant, num_classes=3, input_dim=20, **SMALL).eval()
    _randomise_filter_heads(model)
    x, lengths = torch.randn(3, 37, 20), torch.tensor([37, 20, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(x, lengths).logits.detach().float()
        with torch.no_grad():
            fast = model(x, lengths)
    assert fast.sequence.dtype == torch.float32, "the residual stream stays float32"
    error = (fast.logits.float() - reference).abs().max() / reference.abs().max()
    assert error < 2e-2, (variant, error)


def test_folded_block_weights_are_made_in_their_own_dtype_under_autocast():
    """The block's folded weights, first made under bf16 autocast (a GPU's evaluation), stay float32: a later call
    whose branches give float32 (no autocast here; mamba-ssm's path under autocast on a GPU) multiplies float32 by
    float32, and matches the unfolded autograd path."""
    torch.manual_seed(0)
    model = build_model("tf", num_classes=3, input_dim=20, **SMALL).eval()
    x, lengths = torch.randn(3, 37, 20), torch.tensor([37, 20, 5])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, lengths)
        assert all(w.dtype == torch.float32 for w in model.block._folded_weights())
        folded = model(x, lengths).logits
    torch.testing.assert_close(folded, model(x, lengths).logits.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padded", ["grouped", "dft"])
@pytest.mark.parametrize("variant", ["tf", "dual_temporal", "temporal"])
def test_batched_inference_path_as_on_a_gpu_under_bf16_autocast(monkeypatch, variant, padded):
    """A GPU evaluates the padded batch at once without autograd, under bf16 autocast, with the SSD's whole-sequence
    in-place form (`out=` matmuls) and the filter's in-place padded forms. Forced here on a CPU (its autocast, the
    SSD's GPU form): within bf16's precision of the autograd path, in float32."""
    from tfmamba import ssd

    monkeypatch.setattr(ssd, "_scan_by_chunk", lambda device: False)
    torch.manual_seed(0)
    model = build_model(variant, num_classes=3, input_dim=20, **SMALL).eval()
    _randomise_filter_heads(model)
    set_filter_modes(model, padded=padded)
    x, lengths = torch.randn(3, 37, 20), torch.tensor([37, 20, 5])
    valid = (torch.arange(37)[None, :] < lengths[:, None]).unsqueeze(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model.sequence(x, lengths).detach() * valid
        with torch.no_grad():
            fast = model.sequence(x, lengths) * valid
    assert fast.dtype == torch.float32
    error = (fast - reference).abs().max() / reference.abs().max()
    assert error < 2e-2, (variant, padded, error)


def test_full_size_tf_fast_path_matches_the_sequential_reference(monkeypatch):
    """The paper-size `tf` model: the inference path (SDPA without a mask, folded block, chunked in-place SSD) against
    the batched path with a key-padding mask and the step-by-step SSD recurrence: within 1e-5 in float32."""
    from tfmamba.modules import mamba2
    from tfmamba.ssd import ssd_scan_sequential

    torch.manual_seed(0)
    model = build_model("tf").eval()
    _randomise_filter_heads(model)
    x, lengths = torch.randn(2, 100, 1024), torch.tensor([100, 100])  # two chunks of 64, the second ragged
    with torch.no_grad():
        fast = model(x, lengths)
        masked = model.sequence(x, lengths)  # with a key-padding mask that masks nothing
        monkeypatch.setattr(mamba2, "ssd", lambda *args, backend="auto", **kwargs: ssd_scan_sequential(*args, **kwargs))
    reference = model(x, lengths)
    assert (fast.sequence - reference.sequence.detach()).abs().max() < 1e-5
    assert (fast.logits - reference.logits.detach()).abs().max() < 1e-5
    assert (fast.sequence - masked).abs().max() < 1e-5


def test_attention_encoder_is_multihead_attention_through_sdpa():
    """The encoder's SDPA call gives nn.MultiheadAttention's own result on its weights, with and without a mask."""
    from tfmamba.modules.attention import SelfAttentionEncoder

    torch.manual_seed(0)
    encoder = SelfAttentionEncoder(32, 4, 24).eval()
    x = torch.randn(3, 19, 32)
    mask = torch.arange(19)[None, :] < torch.tensor([19, 11, 2])[:, None]
    with torch.no_grad():
        for m in (None, mask):
            ours = encoder.self_attention(x, m)
            theirs, _ = encoder.attn(x, x, x, key_padding_mask=None if m is None else ~m, need_weights=False)
            valid = torch.ones_like(mask) if m is None else mask
            assert torch.allclose(ours[valid], theirs[valid], atol=1e-6)


def test_folded_block_follows_weight_changes():
    """The block's inference fold of fuse x out_proj is rebuilt when a weight changes (an optimizer step, a load)."""
    torch.manual_seed(0)
    model = build_model("tf", num_classes=3, input_dim=20, **SMALL).eval()
    x, lengths = torch.randn(2, 17, 20), torch.tensor([17, 9])
    with torch.no_grad():
        before = model(x, lengths).logits
        model.block.fuse.weight.mul_(1.5)
        model.block.second.out_proj.weight.add_(0.1)
        model.block.first.norm.weight.mul_(0.5)  # folded into out_proj too
        after = model(x, lengths).logits
    assert not torch.allclose(before, after)
    assert torch.allclose(after, model(x, lengths).logits.detach(), atol=1e-5)
    state = {k: v.clone() for k, v in build_model("tf", num_classes=3, input_dim=20, **SMALL).state_dict().items()}
    model.load_state_dict(state)
    with torch.no_grad():
        loaded = model(x, lengths).logits
    assert torch.allclose(loaded, model(x, lengths).logits.detach(), atol=1e-5)
    with torch.inference_mode():  # weights made here have no version counter: the block runs unfolded
        built = build_model("tf", num_classes=3, input_dim=20, **SMALL).eval()
        built.load_state_dict(state)
        assert torch.allclose(built(x, lengths).logits, loaded, atol=1e-5)


def test_frequency_filter_without_lengths_and_in_place():
    """lengths=None (nothing padded) and the in-place no-autograd path give the masked, out-of-place result."""
    torch.manual_seed(0)
    filt = FrequencyFilter(6, filter_init=0.3, hidden=4)
    with torch.no_grad():
        filt.head[2].weight.normal_()
    x = torch.randn(2, 23, 6)
    reference = filt(x, torch.tensor([23, 23]))
    with torch.no_grad():
        assert torch.allclose(filt(x), reference.detach(), atol=1e-6)
        assert torch.allclose(filt(x, torch.tensor([23, 23])), reference.detach(), atol=1e-6)


@pytest.mark.parametrize("seqlen", [1, 2, 3, 4, 9])
def test_conv_without_autograd_is_nn_conv1d(seqlen):
    """The shifted multiply-adds that replace `nn.Conv1d` at inference give its causal output, short inputs too."""
    torch.manual_seed(0)
    mixer = TemporalBranch(16, d_state=8, headdim=8)
    xbc = torch.randn(2, seqlen, mixer.conv_dim + 5)[..., 2 : 2 + mixer.conv_dim]  # a strided view, as from in_proj
    reference = mixer.conv_silu(xbc)
    with torch.no_grad():
        assert torch.allclose(mixer.conv_silu(xbc), reference, atol=1e-6)


def test_filter_statistics_are_torch_std_mean():
    from tfmamba.modules.frequency_filter import _std_mean_over_bins

    log_power = torch.randn(3, 41, 7) * 3 - 5
    std, mean = _std_mean_over_bins(log_power)
    ref_std, ref_mean = torch.std_mean(log_power, dim=1, correction=0)
    assert torch.allclose(std, ref_std, atol=1e-5) and torch.allclose(mean, ref_mean, atol=1e-5)


def test_frequency_filter_in_place_over_several_transpose_tiles():
    """Sequences longer than the channels-first copy's tile (256 frames) filter as the autograd path does."""
    torch.manual_seed(0)
    filt = FrequencyFilter(5, filter_init=0.3, hidden=4)
    with torch.no_grad():
        filt.head[2].weight.normal_()
    x = torch.randn(2, 601, 7)[..., 1:6]  # a strided view, as the projection's [x, B, C] part is
    reference = filt(x)
    with torch.no_grad():
        assert torch.allclose(filt(x), reference.detach(), atol=1e-6)


@pytest.mark.parametrize("group_size", [None, 16])
def test_gated_rmsnorm_is_rmsnorm_of_x_gated_by_silu_z(group_size):
    """The autograd form (F.rms_norm) against the definition, per group: forward and gradients."""
    from tfmamba.modules.norm import RMSNormGated

    torch.manual_seed(0)
    norm = RMSNormGated(48, group_size=group_size)
    with torch.no_grad():
        norm.weight.normal_()
    x, z = torch.randn(2, 9, 48, requires_grad=True), torch.randn(2, 9, 48, requires_grad=True)
    out = norm(x, z)
    groups = (x * torch.nn.functional.silu(z)).unflatten(-1, (-1, group_size or 48))
    expected = (groups / groups.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()).flatten(-2) * norm.weight
    assert torch.allclose(out, expected, atol=1e-5)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), (x, z, norm.weight))
    want = torch.autograd.grad((expected * weights).sum(), (x, z, norm.weight))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(norm(x, z, scale=False) * norm.weight, out, atol=1e-5)


def test_gated_rmsnorm_in_place_is_the_autograd_form():
    """The gated RMSNorm without autograd (in silu(z)'s memory, vecdot) gives the out-of-place result."""
    from tfmamba.modules.norm import RMSNormGated

    torch.manual_seed(0)
    norm = RMSNormGated(48)
    with torch.no_grad():
        norm.weight.normal_()
    x, z = torch.randn(2, 9, 48), torch.randn(2, 9, 60)[..., 5:53]  # z a strided view, as from in_proj
    reference = norm(x, z)
    with torch.no_grad():
        assert torch.allclose(norm(x, z), reference, atol=1e-5)
        assert torch.allclose(norm(x), norm._reference(x, None), atol=1e-5)
