"""mamba-ssm's scan as a custom op: its wiring (schema, fake shapes, autograd, one compiled graph) on a CPU, with the
kernels' two entry points computed by the pure-PyTorch scan; the real kernels under `torch.compile` on a GPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from tfmamba import mamba_ssm_op
from tfmamba.ssd import mixer_like_inputs, resolve_backend, ssd, ssd_scan

NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias")


class TorchKernels:
    """`_mamba_chunk_scan_combined_fwd` / `_bwd` as mamba-ssm 2.3 calls and returns them, by `ssd_scan`."""

    @staticmethod
    def _mamba_chunk_scan_combined_fwd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False,
                                       dt_limit=(0.0, float("inf"))):
        with torch.no_grad():
            out = ssd_scan(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                           dt_limit=dt_limit).to(x.dtype)
        return out, None, dt, None, None, None

    @staticmethod
    def _mamba_chunk_scan_combined_bwd(dout, x, dt, A, B, C, out, chunk_size, D=None, dt_bias=None,
                                       dt_softplus=False, dt_limit=(0.0, float("inf"))):
        given = {k: v.detach().requires_grad_() for k, v in zip(NAMES, (x, dt, A, B, C, D, dt_bias)) if v is not None}

        def vjp() -> dict:
            y = ssd_scan(**{k: given.get(k) for k in NAMES}, chunk_size=chunk_size, dt_softplus=dt_softplus,
                         dt_limit=dt_limit)
            return dict(zip(given, torch.autograd.grad(y, list(given.values()), dout)))

        # An op's implementation runs below autograd's dispatch keys (thread-local): autograd runs in a fresh thread.
        with ThreadPoolExecutor(1) as pool:
            grads = pool.submit(vjp).result()
        dx, ddt, dA, dB, dC, dD, ddt_bias = (grads.get(k) for k in NAMES)
        return dx, ddt, dA, dB, dC, dD, None, ddt_bias, None


@pytest.fixture
def torch_kernels(monkeypatch):
    monkeypatch.setattr(mamba_ssm_op, "_kernels", lambda: TorchKernels)


def scan_inputs(with_extras: bool, seqlen: int = 37) -> tuple[dict, dict]:
    inputs, extras = mixer_like_inputs(2, seqlen, nheads=4, headdim=8, ngroups=2, dstate=6, seed=3)
    extras.pop("z", None)
    if not with_extras:
        extras = {"dt_softplus": False}
    return inputs, extras


@pytest.mark.parametrize("with_extras", [True, False])
def test_the_op_passes_torch_library_opcheck(torch_kernels, with_extras):
    """Schema, fake (shape-only) implementation, autograd registration and AOT dispatch agree with the kernels."""
    inputs, extras = scan_inputs(with_extras)
    args = [v.requires_grad_() for v in inputs.values()]
    args += [16, extras.get("D"), extras.get("dt_bias"), extras["dt_softplus"], 0.0, float("inf")]
    torch.library.opcheck(torch.ops.tfmamba.mamba_chunk_scan.default, tuple(args))


def test_a_compiled_scan_is_one_graph_with_the_kernels_gradients(torch_kernels):
    """Compiled with the op the scan and what surrounds it are one graph (fullgraph: no break), with the outputs and
    gradients of the kernels called eagerly."""
    inputs, extras = scan_inputs(True, seqlen=50)
    weights = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(0))

    def loss(x, dt, A, B, C, D, dt_bias):
        y = mamba_ssm_op.chunk_scan(torch.tanh(x), dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True)
        return (y * weights).sum()

    def gradients(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (*inputs.values(), extras["D"], extras["dt_bias"])]
        value = fn(*leaves)
        return value, torch.autograd.grad(value, leaves)

    counter = CompileCounterWithBackend("aot_eager")
    compiled_value, compiled_grads = gradients(torch.compile(loss, backend=counter, fullgraph=True))
    eager_value, eager_grads = gradients(lambda x, *rest: (ssd_scan(torch.tanh(x), *rest[:4], 16, D=rest[4],
                                                                    dt_bias=rest[5], dt_softplus=True) * weights).sum())
    assert counter.frame_count == 1
    assert torch.allclose(compiled_value, eager_value, rtol=1e-5)
    for name, got, want in zip(NAMES, compiled_grads, eager_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), name


def test_a_compiled_scan_takes_one_graph_for_every_length(torch_kernels):
    """As `training.loop.CompiledSteps` compiles the model: batch and length symbolic, so lengths of 1-9 chunks,
    whole and partial, run through one graph (the op's fake shapes follow the symbols), with the kernels' values."""
    counter = CompileCounterWithBackend("aot_eager")

    def loss(x, dt, A, B, C, D, dt_bias):
        return mamba_ssm_op.chunk_scan(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias, dt_softplus=True).square().sum()

    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    for seqlen in (50, 16, 83, 144):
        inputs, extras = scan_inputs(True, seqlen=seqlen)
        args = [*inputs.values(), extras["D"], extras["dt_bias"]]
        for tensor in args[:5]:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
            torch._dynamo.maybe_mark_dynamic(tensor, 1)
        eager = (ssd_scan(*args[:5], 16, D=args[5], dt_bias=args[6], dt_softplus=True) ** 2).sum()
        torch.testing.assert_close(compiled(*args), eager, rtol=1e-5, atol=1e-4, msg=f"{seqlen} frames")
    assert counter.frame_count == 1


@pytest.mark.gpu
def test_mamba_ssm_under_torch_compile_matches_it_eager_on_cuda():
    """The real kernels through the op in an Inductor graph: the eager call's outputs and gradients."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() or resolve_backend("auto", torch.device("cuda")) != "mamba_ssm":
        pytest.skip("needs CUDA and mamba-ssm (pip install '.[gpu]')")
    inputs, extras = mixer_like_inputs(4, 300, nheads=8, headdim=64, dstate=64, device="cuda", dtype=torch.bfloat16)
    inputs["A"] = inputs["A"].float()
    extras = {"D": extras["D"].float(), "dt_bias": extras["dt_bias"].float()}
    weights = torch.randn(inputs["x"].shape, device="cuda", dtype=torch.bfloat16)

    def scan(x, dt, A, B, C, D, dt_bias):
        y = ssd(torch.tanh(x), dt, A, B, C, 64, D=D, dt_bias=dt_bias, dt_softplus=True, backend="mamba_ssm")
        return y, (y.float() * weights).sum()

    def outputs_and_gradients(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (*inputs.values(), *extras.values())]
        y, loss = fn(*leaves)
        return y, torch.autograd.grad(loss, leaves)

    def relative_error(got, want):
        return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)).item()

    counter = CompileCounterWithBackend("inductor")
    compiled_y, compiled_grads = outputs_and_gradients(torch.compile(scan, backend=counter, fullgraph=True))
    eager_y, eager_grads = outputs_and_gradients(scan)
    assert counter.frame_count == 1
    errors = {"y": relative_error(compiled_y, eager_y)}
    errors |= {f"d{name}": relative_error(got, want) for name, got, want in zip(NAMES, compiled_grads, eager_grads)}
    print("compiled vs eager mamba-ssm, max error of the largest value:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 2e-2, errors
