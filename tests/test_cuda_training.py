"""On a GPU the trainer's step never makes the host wait for the device: no `.item()`, no copy from pageable
memory, no data-dependent branch read back, unpadded or padded. CUDA's sync debug mode turns any such wait
into an error. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from tfmamba.config import TrainConfig
from tfmamba.model import ModelConfig, TFMamba
from tfmamba.modules.frequency_filter import FrequencyFilter, set_filter_modes
from tfmamba.modules.norm import RMSNormGated
from tfmamba.ssd import _import_mamba_chunk_scan
from tfmamba.training.input_norm import InputNorm
from tfmamba.training.loop import (batch_losses, device_batches, make_cmdt, make_optimizer, make_scheduler,
                                   to_device)

pytestmark = pytest.mark.gpu

SMALL = dict(d_model=64, d_state=16, headdim=16, num_heads=4, ffn_dim=32, input_dim=48, chunk_size=16)


def backends() -> list[str]:
    return ["torch"] + (["mamba_ssm"] if torch.cuda.is_available() and _import_mamba_chunk_scan() else [])


@pytest.mark.parametrize("padded", ["no", "grouped", "dft"])
@pytest.mark.parametrize("backend", backends())
def test_the_training_step_never_waits_for_the_gpu(backend: str, padded: str) -> None:
    """Batches as a GPU's loader gives them (pinned, the store's float16), unpadded or padded (the frequency
    filter one FFT per length, or all rows as one DFT)."""
    device = torch.device("cuda")
    config = TrainConfig(cmdt_weight=0.1, epochs=2)
    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), **SMALL, "variant": "tf_cmdt",
                                           "ssd_backend": backend})).to(device).train()
    if padded != "no":
        set_filter_modes(model, padded=padded)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 4)
    cmdt = make_cmdt(config)
    lengths = torch.tensor([40, 33, 40, 21]) if padded != "no" else torch.full((4,), 40)
    raw = {"features": torch.randn(4, 40, SMALL["input_dim"]).half().pin_memory(), "lengths": lengths.pin_memory(),
           "labels": torch.tensor([0, 1, 0, 1]).pin_memory()}

    def step() -> torch.Tensor:
        loss, _, _ = batch_losses(config, model, to_device(raw, InputNorm(), device), cmdt, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    step()  # the first step builds kernels, FFT plans and autotunes, which may wait
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(bool(torch.isfinite(loss)) for loss in losses)


@pytest.mark.parametrize("padded", [True, False])
def test_filter_as_one_dft_matches_the_ffts_on_the_gpu(padded: bool) -> None:
    """cuBLAS's matmuls against cuFFT (per length for a padded batch, at once for an unpadded one): float32 within
    1e-4, and under bf16 autocast within bf16's precision of the float32 result."""
    torch.manual_seed(0)
    filt = FrequencyFilter(64, filter_init=0.3, hidden=4).cuda()
    lengths = torch.tensor([300, 171, 244, 97, 300, 12]) if padded else None
    x = torch.randn(6, 300, 64, device="cuda")
    set_filter_modes(filt, padded="grouped", unpadded="fft")
    reference = filt(x, lengths)
    set_filter_modes(filt, padded="dft", unpadded="dft")
    assert torch.allclose(filt(x, lengths), reference, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = filt(x.bfloat16(), lengths)
    assert (low.float() - reference).abs().max() / reference.abs().max() < 2e-2


def test_gated_rmsnorm_through_the_fused_cuda_kernel_matches_its_definition() -> None:
    torch.manual_seed(0)
    norm = RMSNormGated(256).cuda()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 50, 256, device="cuda", requires_grad=True)
    z = torch.randn(4, 50, 256, device="cuda", requires_grad=True)
    out = norm(x, z)
    gated = x * torch.nn.functional.silu(z)
    expected = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    assert torch.allclose(out, expected, atol=1e-5)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), (x, z, norm.weight), retain_graph=True)
    want = torch.autograd.grad((expected * weights).sum(), (x, z, norm.weight))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", backends())
def test_a_whole_fold_on_the_gpu(tmp_path, backend: str) -> None:
    """`train_fold` on CUDA as a sweep's worker runs it: pinned float16 batches, bf16 autocast in training and
    evaluation (the inference path), checkpoints, the saved model; then the saved model predicts on the GPU."""
    from test_train import run, synthetic, tiny_config

    from tfmamba.training.outputs import load_trained_model

    # SMALL's state and head sizes: mamba-ssm's kernels, compiled and autotuned per such sizes, are those of the
    # tests above (over a minute a new family on an H200)
    sizes = {key: SMALL[key] for key in ("d_state", "headdim")}
    result = run(tmp_path, "gpu", tiny_config(epochs=2, ssd_backend=backend, amp=True, **sizes), data=synthetic())
    assert result.status == "ok" and 0 <= result.test["ua"] <= 1
    model, _ = load_trained_model(tmp_path / "gpu")
    model = model.to("cuda").eval()
    store, _, fold = synthetic()
    x = torch.from_numpy(store.get(fold.test[0]).astype("float32"))[None].cuda()
    with torch.no_grad():
        logits = model(x, torch.tensor([x.shape[1]])).logits
    assert logits.shape == (1, 4) and bool(torch.isfinite(logits).all())


def test_batches_copied_ahead_on_a_side_stream_are_the_plain_copies() -> None:
    """`device_batches` hands on every batch, in order, equal to `to_device`'s, with the host never waiting: each
    batch is read after a long kernel queued behind it (a copy not ordered before the compute, or memory handed
    back to the side stream too early, would show as other values), and later batches land meanwhile."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    raws = [{"features": torch.randn(4, 40 + i, 8).half().pin_memory(), "lengths": torch.full((4,), 40 + i),
             "labels": torch.randint(0, 4, (4,)).pin_memory(), "indices": torch.arange(4) + 4 * i} for i in range(6)]
    norm = InputNorm()
    seen = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for raw, batch in device_batches(raws, norm, device):
            torch.cuda._sleep(2_000_000)  # ~1 ms of GPU time before this batch is read
            seen.append((raw, batch.features * 1, batch.labels + 0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [raw["indices"].tolist() for raw, _, _ in seen] == [raw["indices"].tolist() for raw in raws]
    for raw, features, labels in seen:
        expected = to_device(raw, norm, device)
        assert torch.equal(features, expected.features) and torch.equal(labels, expected.labels)


def test_evaluation_reads_its_predictions_once_not_per_batch() -> None:
    """`evaluate` keeps the losses and predictions on the GPU until the last batch is queued: the only waits
    are its final reads (two), not one per batch, and the predictions are those of a plain forward."""
    import warnings

    from tfmamba.training.distributed import Dist
    from tfmamba.training.loop import autocast, evaluate

    device = torch.device("cuda")
    config = TrainConfig(epochs=2)
    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), **SMALL, "variant": "tf_cmdt",
                                           "ssd_backend": "torch"})).to(device).eval()
    raws = [{"features": torch.randn(4, 30 + 5 * i, SMALL["input_dim"]).half().pin_memory(),
             "lengths": torch.tensor([30 + 5 * i, 21, 30 + 5 * i, 17]),
             "labels": torch.tensor([0, 1, 2, 3]).pin_memory(),
             "indices": torch.arange(4) + 4 * i} for i in range(6)]
    evaluate(config, model, InputNorm(), raws, 24, device, Dist())  # the first pass builds kernels and FFT plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate(config, model, InputNorm(), raws, 24, device, Dist())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchronizing" in str(w.message)]
    assert len(waits) <= 2, [str(w.message) for w in waits]
    with torch.no_grad(), autocast(config, device):
        expected = torch.cat([model(to_device(raw, InputNorm(), device).features, raw["lengths"]).logits.argmax(1)
                              for raw in raws])
    assert result.predicted.tolist() == expected.tolist()


@pytest.mark.parametrize("backend", backends())
def test_compiled_steps_as_cuda_graphs_train_as_eager_and_never_wait(backend: str) -> None:
    """`cuda_graphs`: the compiled forward and backward replayed as CUDA graphs, one per rounded batch shape, give
    the eager model's losses step after step over padded and unpadded batches of several lengths; once each shape
    is recorded, a step never makes the host wait."""
    import copy

    from tfmamba.training.loop import step_module

    device = torch.device("cuda")
    config = TrainConfig(cmdt_weight=0.1, amp=False, compile=True, cuda_graphs=True, epochs=2)
    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), **SMALL, "variant": "tf_cmdt", "dropout": 0.0,
                                           "ssd_backend": backend})).to(device).train()
    twin = copy.deepcopy(model)
    steps = step_module(config, model, device)
    assert steps.cuda_graphs
    optimizers = {id(steps): make_optimizer(config, model), id(twin): make_optimizer(config, twin)}
    cmdt = make_cmdt(config)
    shapes = [(40, [40, 33, 40, 21]), (37, [37, 37, 37, 37]), (50, [50, 12, 44, 50])]
    raws = [{"features": torch.randn(4, frames, SMALL["input_dim"]).half().pin_memory(),
             "lengths": torch.tensor(lengths), "labels": torch.tensor([0, 1, 0, 1]).pin_memory()}
            for frames, lengths in shapes]

    def step(net: torch.nn.Module, raw: dict) -> torch.Tensor:
        loss, _, _ = batch_losses(config, net, to_device(raw, InputNorm(), device), cmdt, device)
        optimizers[id(net)].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizers[id(net)].step()
        return loss.detach()

    for _ in range(2):  # each shape's first step runs the compiled code as it is, its second records its graphs
        for raw in raws:
            torch.testing.assert_close(step(steps, raw), step(twin, raw), rtol=1e-3, atol=1e-5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:  # then the graphs replay
        losses = [(step(steps, raw), step(twin, raw)) for raw in raws]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for ours, theirs in losses:
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
