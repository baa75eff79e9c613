"""The chunked SSD against the step-by-step recurrence, gradients, and backend dispatch."""

from __future__ import annotations

import os

import pytest
import torch

from tfmamba import ssd as ssd_mod
from tfmamba.ssd import mixer_like_inputs, resolve_backend, ssd, ssd_scan, ssd_scan_sequential, traced_length


def make_inputs(b, l, h, p, g, n, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_(requires_grad)

    return dict(
        x=r(b, l, h, p),
        dt=r(b, l, h, scale=0.5),
        A=(-torch.rand(h, generator=gen, dtype=dtype) * 4 - 0.1).requires_grad_(requires_grad),
        B=r(b, l, g, n),
        C=r(b, l, g, n),
    )


def test_a_first_scan_under_torch_compile_logs_nothing_and_stays_one_graph(monkeypatch):
    """The backend choice is logged at a process's first scan of each kind; a log call inside a compiled graph
    would split it (fullgraph fails), so under compile the log waits for an eager call."""
    monkeypatch.setattr(ssd_mod, "_LOGGED_CHOICES", set())
    inputs, extras = mixer_like_inputs(1, 20, nheads=2, headdim=4, dstate=4)
    compiled = torch.compile(lambda **kw: ssd(**kw, chunk_size=8, backend="torch"), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs, **extras), ssd(**inputs, **extras, chunk_size=8, backend="torch"))
    assert ssd_mod._LOGGED_CHOICES == {("torch", "torch")}  # logged by the eager call


def test_traced_lengths_avoid_every_length_the_compiled_scan_special_cases():
    """A compiled step pads a batch to `traced_length`: more than two chunks, a partial last chunk at least two
    frames short of whole (a padding of one frame compiled a graph of its own), and at most two frames added
    beyond the two-chunk minimum."""
    for chunk in (16, 64, 256):
        for seqlen in range(1, 4 * chunk + 2):
            length = traced_length(seqlen, chunk)
            assert length >= seqlen and length > 2 * chunk, (chunk, seqlen)
            assert length % chunk not in (0, chunk - 1), (chunk, seqlen, length)
            assert length - max(seqlen, 2 * chunk + 1) <= 2, (chunk, seqlen, length)


@pytest.mark.slow
def test_the_compiled_scan_passes_states_between_chunks_without_a_loop():
    """Under torch.compile the chunk-to-chunk state passing is one weighted sum (`_entering_states`): the same
    outputs and gradients as eager, and one graph for 3-8 chunks, where the loop compiled once per chunk count
    (padded batches of every length would have run out of Dynamo's recompilations)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(ssd_scan, dynamic=True, backend="aot_eager")
    for length in (130, 260, 450):
        inputs, extras = mixer_like_inputs(2, length, nheads=4, headdim=8, ngroups=2, dstate=16, dtype=torch.float64)
        eager = {k: v.requires_grad_() for k, v in inputs.items()}
        traced = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        expected, got = ssd_scan(**eager, chunk_size=64, **extras), compiled(**traced, chunk_size=64, **extras)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        expected.square().sum().backward()
        got.square().sum().backward()
        for name in eager:
            torch.testing.assert_close(traced[name].grad, eager[name].grad, rtol=1e-9, atol=1e-9, msg=name)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize(
    "b,l,h,p,g,n,chunk",
    [
        (2, 37, 4, 3, 2, 5, 8),  # ragged: 37 is not a multiple of 8, two groups
        (1, 64, 4, 2, 1, 3, 16),  # exact multiple
        (3, 5, 6, 4, 3, 7, 16),  # shorter than one chunk
        (2, 1, 2, 2, 1, 2, 4),  # a single frame
        (1, 50, 8, 4, 4, 6, 7),  # odd chunk size
    ],
)
def test_chunked_matches_sequential_float64(b, l, h, p, g, n, chunk):
    inp = make_inputs(b, l, h, p, g, n)
    gen = torch.Generator().manual_seed(1)
    extras = dict(
        D=torch.randn(h, generator=gen, dtype=torch.float64),
        z=torch.randn(b, l, h, p, generator=gen, dtype=torch.float64),
        dt_bias=torch.randn(h, generator=gen, dtype=torch.float64),
        dt_softplus=True,
    )
    y = ssd_scan(**inp, chunk_size=chunk, **extras)
    y_ref = ssd_scan_sequential(**inp, chunk_size=chunk, **extras)
    assert y.dtype == torch.float64
    err = (y - y_ref).abs().max().item()
    print(f"max abs diff chunked vs sequential: {err:.3e}")
    assert err < 1e-10


def test_plain_recurrence_by_hand():
    """One head, headdim 1, dstate 1: h_t = exp(dt A) h_{t-1} + dt x B, y = C h + D x."""
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64).view(1, 3, 1)
    A = torch.tensor([-2.0], dtype=torch.float64)
    B = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    C = torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    D = torch.tensor([0.5], dtype=torch.float64)
    h, expected = 0.0, []
    for t in range(3):
        h = torch.exp(dt[0, t, 0] * A[0]).item() * h + dt[0, t, 0].item() * x[0, t, 0, 0].item() * B[0, t, 0, 0].item()
        expected.append(C[0, t, 0, 0].item() * h + 0.5 * x[0, t, 0, 0].item())
    for fn in (ssd_scan, ssd_scan_sequential):
        y = fn(x, dt, A, B, C, 2, D=D)
        assert torch.allclose(y.flatten(), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_d_per_channel_and_dt_limit():
    inp = make_inputs(2, 19, 4, 3, 1, 4)
    D = torch.randn(4, 3, dtype=torch.float64)
    kw = dict(D=D, dt_softplus=True, dt_limit=(0.01, 0.5))
    assert torch.allclose(ssd_scan(**inp, chunk_size=5, **kw), ssd_scan_sequential(**inp, **kw), atol=1e-10)


def test_float32_close_to_float64_and_half_inputs_accumulate_in_float32():
    inp64 = make_inputs(2, 40, 4, 8, 1, 16)
    inp32 = {k: v.float() for k, v in inp64.items()}
    y64 = ssd_scan(**inp64, chunk_size=16, dt_softplus=True)
    y32 = ssd_scan(**inp32, chunk_size=16, dt_softplus=True)
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max().item() < 1e-4
    yb = ssd_scan(**{k: v.bfloat16() for k, v in inp64.items()}, chunk_size=16, dt_softplus=True)
    assert yb.dtype == torch.float32 and torch.isfinite(yb).all()
    assert ssd(**{k: v.bfloat16() for k, v in inp64.items()}, chunk_size=16, backend="torch").dtype == torch.bfloat16


def test_gradcheck_tiny():
    inp = make_inputs(1, 6, 2, 2, 1, 2, requires_grad=True)
    D = torch.randn(2, dtype=torch.float64, requires_grad=True)
    dt_bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, dt, A, B, C, D, dt_bias):
        return ssd_scan(x, dt, A, B, C, 4, D=D, dt_bias=dt_bias, dt_softplus=True)

    assert torch.autograd.gradcheck(fn, (inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], D, dt_bias))


def test_gradients_match_sequential():
    inp = make_inputs(2, 23, 4, 3, 2, 5, requires_grad=True)
    ref = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    weights = torch.randn(2, 23, 4, 3, dtype=torch.float64)
    (ssd_scan(**inp, chunk_size=8, dt_softplus=True) * weights).sum().backward()
    (ssd_scan_sequential(**ref, dt_softplus=True) * weights).sum().backward()
    for k in inp:
        assert torch.allclose(inp[k].grad, ref[k].grad, atol=1e-9), k


def test_bad_shapes_raise_value_error():
    inp = make_inputs(1, 4, 4, 2, 1, 3)
    with pytest.raises(ValueError, match="dt must be"):
        ssd_scan(inp["x"], inp["dt"][:, :2], inp["A"], inp["B"], inp["C"])
    with pytest.raises(ValueError, match="multiple of ngroups"):
        bad = make_inputs(1, 4, 4, 2, 3, 3)
        ssd_scan(**bad)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(**inp, chunk_size=0)


def test_mixer_like_inputs_match_the_sequential_reference():
    inputs, extras = mixer_like_inputs(1, 40, nheads=4, headdim=8, dstate=16, dtype=torch.float64)
    assert inputs["x"].shape == (1, 40, 4, 8) and inputs["B"].shape == (1, 40, 1, 16)
    assert torch.allclose(ssd_scan(**inputs, chunk_size=16, **extras), ssd_scan_sequential(**inputs, **extras), atol=1e-10)


def test_backend_choice_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="unknown SSD backend"):
        resolve_backend("cuda-fast", cpu)
    inp = make_inputs(1, 4, 2, 2, 1, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError):
        ssd(**inp, backend="mamba_ssm")


@pytest.mark.parametrize("user_value", [None, "0"])
def test_mamba_ssm_autotuning_is_kept_on_disk_unless_the_user_says_otherwise(monkeypatch, user_value):
    """Set before mamba-ssm's kernels are imported (Triton reads it then), whether or not they import here."""
    monkeypatch.setattr(ssd_mod, "_MAMBA_IMPORT_TRIED", False)
    monkeypatch.setattr(ssd_mod, "_MAMBA_SCAN", None)
    if user_value is None:
        monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    else:
        monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", user_value)
    ssd_mod._import_mamba_chunk_scan()
    assert os.environ["TRITON_CACHE_AUTOTUNING"] == (user_value or "1")


@pytest.mark.parametrize("backend", ["auto", "mamba_ssm"])
def test_choosing_mamba_ssm_for_cuda_imports_it_before_any_graph(monkeypatch, backend):
    """`step_module` resolves the backend eagerly: mamba-ssm's import and the environment it sets must happen then,
    not in the compiled graph's first trace (Dynamo splits a graph at `os.environ`, seen on an H200)."""
    monkeypatch.setattr(ssd_mod, "_MAMBA_IMPORT_TRIED", False)
    monkeypatch.setattr(ssd_mod, "_MAMBA_SCAN", None)
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    resolve_backend(backend, torch.device("cpu"))
    assert not ssd_mod._MAMBA_IMPORT_TRIED
    resolve_backend(backend, torch.device("cuda"))
    assert ssd_mod._MAMBA_IMPORT_TRIED and os.environ["TRITON_CACHE_AUTOTUNING"] == "1"


@pytest.mark.gpu
@pytest.mark.parametrize("seqlen", [250, 1000, 2000])
def test_mamba_ssm_matches_torch_on_cuda(seqlen):
    """fp32, the full model's shapes: mamba-ssm's Triton kernel vs the torch chunked SSD (full fp32 matmuls).

    Triton runs fp32 `tl.dot` in TF32 by default (10-bit mantissa), so the kernel differs from a
    true fp32 result by ~1e-3 relative (measured on an H100: 0.017-0.022 absolute on outputs of
    magnitude 13-17). A semantic mismatch (dt, D, grouping) gives O(1) relative errors, which this catches.
    """
    if ssd_mod._import_mamba_chunk_scan() is None:
        pytest.skip("mamba-ssm is not installed (pip install '.[gpu]')")
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs, extras = mixer_like_inputs(2, seqlen, device="cuda")
    y_fast = ssd(**inputs, chunk_size=256, backend="mamba_ssm", **extras)
    y_ref = ssd_scan(**inputs, chunk_size=64, **extras)
    err = (y_fast.float() - y_ref).abs().max().item()
    scale = y_ref.abs().max().item()
    print(f"mamba-ssm vs torch SSD, seqlen {seqlen}: max abs diff {err:.3e} (max |y| {scale:.2f})")
    assert err / scale < 5e-3


FAST_PATH_SHAPES = [(2, 37, 4, 3, 2, 5, 8), (1, 130, 8, 4, 1, 6, 64), (3, 5, 6, 4, 3, 7, 16)]


def mixer_extras(b, l, h, p, seed):
    """What the mixer passes beside the scan's inputs: D, the gate z, dt's bias and softplus."""
    gen = torch.Generator().manual_seed(seed)
    return dict(D=torch.randn(h, generator=gen), z=torch.randn(b, l, h, p, generator=gen),
                dt_bias=torch.randn(h, generator=gen), dt_softplus=True)


@pytest.mark.parametrize("b,l,h,p,g,n,chunk", FAST_PATH_SHAPES)
def test_in_place_path_matches_the_autograd_path_float32(b, l, h, p, g, n, chunk):
    """Without autograd the chunked scan runs its elementwise steps in place; with it, out of place: same result."""
    inp = make_inputs(b, l, h, p, g, n, dtype=torch.float32)
    extras = mixer_extras(b, l, h, p, seed=1)
    with torch.no_grad():
        fast = ssd_scan(**inp, chunk_size=chunk, **extras)
    graph = ssd_scan(**{k: v.clone().requires_grad_(True) for k, v in inp.items()}, chunk_size=chunk, **extras)
    assert graph.requires_grad
    assert torch.allclose(fast, graph.detach(), atol=1e-5)
    reference = ssd_scan_sequential(**inp, chunk_size=chunk, **extras)
    assert torch.allclose(fast, reference, atol=1e-4)


@pytest.mark.parametrize("b,l,h,p,g,n,chunk", FAST_PATH_SHAPES)
def test_chunk_by_chunk_and_all_chunks_at_once_agree(monkeypatch, b, l, h, p, g, n, chunk):
    """Without autograd a CPU scans one chunk at a time and a GPU all chunks at once: both give the recurrence."""
    import tfmamba.ssd as ssd_module

    inp = make_inputs(b, l, h, p, g, n, dtype=torch.float32)
    extras = mixer_extras(b, l, h, p, seed=2)
    with torch.no_grad():
        by_chunk = ssd_scan(**inp, chunk_size=chunk, **extras)
        monkeypatch.setattr(ssd_module, "_scan_by_chunk", lambda device: False)
        at_once = ssd_scan(**inp, chunk_size=chunk, **extras)
    reference = ssd_scan_sequential(**inp, chunk_size=chunk, **extras)
    assert torch.allclose(by_chunk, at_once, atol=1e-5)
    assert torch.allclose(by_chunk, reference, atol=1e-4)
