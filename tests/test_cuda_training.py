"""On a GPU the trainer's step never makes the host wait for the device: no `.item()`, no copy from pageable
memory, no data-dependent branch read back, unpadded or padded. CUDA's sync debug mode turns any such wait
into an error. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from tfmamba.config import TrainConfig
from tfmamba.model import ModelConfig, TFMamba
from tfmamba.ssd import _import_mamba_chunk_scan
from tfmamba.training.input_norm import InputNorm
from tfmamba.training.loop import batch_losses, make_cmdt, make_optimizer, make_scheduler, to_device

pytestmark = pytest.mark.gpu

SMALL = dict(d_model=64, d_state=16, headdim=16, num_heads=4, ffn_dim=32, input_dim=48, chunk_size=16)


def backends() -> list[str]:
    return ["torch"] + (["mamba_ssm"] if torch.cuda.is_available() and _import_mamba_chunk_scan() else [])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("backend", backends())
def test_the_training_step_never_waits_for_the_gpu(backend: str, padded: bool) -> None:
    device = torch.device("cuda")
    config = TrainConfig(cmdt_weight=0.1, epochs=2)
    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), **SMALL, "variant": "tf_cmdt",
                                           "ssd_backend": backend})).to(device).train()
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, 4)
    cmdt = make_cmdt(config)
    lengths = torch.tensor([40, 33, 40, 21]) if padded else torch.full((4,), 40)
    raw = {"features": torch.randn(4, 40, SMALL["input_dim"]).pin_memory(), "lengths": lengths.pin_memory(),
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
