"""State Space Duality (SSD) scans: the Mamba-2 selective scan in pure PyTorch, plus mamba-ssm dispatch.

All functions take mamba-ssm's `mamba_chunk_scan_combined` arguments and shapes::

    x  (batch, seqlen, nheads, headdim)     dt (batch, seqlen, nheads)     A (nheads,)
    B  (batch, seqlen, ngroups, dstate)     C  (batch, seqlen, ngroups, dstate)
    D  (nheads,) or (nheads, headdim)       z  like x (output gate: y * silu(z))
    -> y (batch, seqlen, nheads, headdim)

and compute the recurrence (per head, with the heads of a group sharing B and C)::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        (h_t: headdim x dstate)
    y_t = h_t C_t + D x_t

`ssd_scan_sequential` runs that recurrence step by step: it is the reference.
`ssd_scan` is the chunked block decomposition of the SSD paper (Dao & Gu 2024, Listing 1):
quadratic attention-like products inside chunks, a linear recurrence between chunk states.
It keeps the heads of a group side by side so that C.B^T is computed once per group and the
chunk states and their read-out are single contiguous matmuls over (heads x headdim) columns.
`ssd` picks a backend: mamba-ssm's Triton kernel on CUDA when it imports, else `ssd_scan`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tfmamba import mamba_ssm_op
from tfmamba.model_config import SSD_BACKENDS

__all__ = ["ssd", "ssd_scan", "ssd_scan_sequential", "mamba_ssm_scan", "resolve_backend", "mixer_like_inputs",
           "traced_length", "BACKENDS"]

logger = logging.getLogger(__name__)

BACKENDS = SSD_BACKENDS


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs accumulate in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be ({h},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l) or B.shape != C.shape:
        raise ValueError(f"B and C must be (batch, seqlen, ngroups, dstate), got {tuple(B.shape)} and {tuple(C.shape)}")
    g, n = B.shape[2], B.shape[3]
    if h % g != 0:
        raise ValueError(f"nheads ({h}) must be a multiple of ngroups ({g})")
    return b, l, h, p, g, n


def _prepare_dt(
    dt: Tensor,
    dtype: torch.dtype,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
) -> Tensor:
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None, inplace: bool = False) -> Tensor:
    """y + D x, then the output gate y * silu(z), as mamba_chunk_scan_combined does (in y's memory if inplace)."""
    if D is not None:
        d = D.to(y.dtype)
        d = d[:, None] if d.dim() == 1 else d
        y = y.addcmul_(x.to(y.dtype), d) if inplace else y + x.to(y.dtype) * d
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = y.mul_(gate) if inplace else y * gate
    return y


def _mul_into(out: Tensor, a: Tensor, b: Tensor, inplace: bool) -> None:
    """out[...] = a * b in one pass when autograd is not involved (`out=`), else through a temporary."""
    if inplace:
        torch.mul(a, b, out=out)
    else:
        out.copy_(a * b)


def _decay_matrix(acs: Tensor, causal: Tensor, inplace: bool) -> Tensor:
    """exp(acs_i - acs_j) on and below the diagonal, 1 above it (the caller zeroes those with C.B^T).

    The upper triangle is set to 0 before the exp, not to -inf after it: exp(-inf) takes the slow
    path of the vectorised exp (~10x the time of finite inputs on an AVX-512 CPU), and a product
    with the 0/1 mask is cheaper than `masked_fill`. Values on and below the diagonal are exact.
    """
    scores = acs.unsqueeze(-1) - acs.unsqueeze(-2)
    return scores.mul_(causal).exp_() if inplace else (scores * causal).exp()


def ssd_scan_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> Tensor:
    """The plain recurrence, one time step after another (vectorised over batch and heads).

    `chunk_size` is accepted for signature parity and ignored. Slow (a Python loop over
    seqlen) but obviously right: every faster path is tested against it.
    """
    b, l, h, p, g, n = _check_shapes(x, dt, A, B, C)
    cd = _compute_dtype(x, dt, A, B, C)
    dt = _prepare_dt(dt, cd, dt_bias, dt_softplus, dt_limit)
    xs, Bs, Cs, As = x.to(cd), B.to(cd), C.to(cd), A.to(cd)
    rep = h // g
    Bh = Bs.repeat_interleave(rep, dim=2)  # (b, l, h, n)
    Ch = Cs.repeat_interleave(rep, dim=2)
    state = xs.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * As)  # (b, h)
        state = state * decay[:, :, None, None] + (dt[:, t, :, None] * xs[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros(b, 0, h, p)
    return _skip_and_gate(y, x, D, z)


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> Tensor:
    """Chunked SSD in pure PyTorch: same result as `ssd_scan_sequential`, in O(seqlen * chunk_size).

    Any seqlen works (the tail chunk is zero-padded with dt = 0, which neither decays nor feeds
    the state). Accumulates in float32, or float64 for float64 inputs; returns that dtype.

    On a CPU the cost is memory traffic over (seqlen x heads x headdim) arrays, not FLOPs, so each
    such array is written once, in the layout its consumer wants: x*dt head-major for the in-chunk
    products, x*dt*decay token-major for the chunk states (one matmul over all heads of a group),
    and the output token-major, built in place. Without autograd the elementwise steps run in place
    (`out=`, `mul_`), and on a CPU one chunk at a time (`_ssd_scan_by_chunk`: temporaries the size
    of a chunk, which stay in cache); with autograd, the same steps run out of place.
    """
    b, l, h, p, g, n = _check_shapes(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cd = _compute_dtype(x, dt, A, B, C)
    dt = _prepare_dt(dt, cd, dt_bias, dt_softplus, dt_limit)
    inplace = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z)))
    q = min(chunk_size, max(l, 1))
    c = math.ceil(l / q)
    lp, pad, hg = c * q, c * q - l, h // g
    xs, Bs, Cs = x.to(cd), B.to(cd), C.to(cd)
    if inplace and _scan_by_chunk(x.device):
        return _skip_and_gate(_ssd_scan_by_chunk(xs, dt, A.to(cd), Bs, Cs, q, D), xs, None, z, inplace=True)
    if pad:
        dt, Bs, Cs = F.pad(dt, (0, 0, 0, pad)), F.pad(Bs, (0, 0, 0, 0, 0, pad)), F.pad(Cs, (0, 0, 0, 0, 0, pad))

    # Log-decays cumulated inside each chunk, (b, h, c, q), and dt head-major: small tensors.
    dt_hm = dt.permute(0, 2, 1)
    acs = (dt_hm * A.to(cd)[:, None]).reshape(b, h, c, q).cumsum(-1)
    # Group-major B and C: (b, g, c, q, n); each group's C.B^T is shared by its heads.
    Bg = Bs.view(b, c, q, g, n).permute(0, 3, 1, 2, 4)
    Cg = Cs.view(b, c, q, g, n).permute(0, 3, 1, 2, 4)

    # 1. Inside each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(acs_i - acs_j) x_j dt_j.
    xdt = xs.new_empty(b, h, lp, p)  # head-major, chunk-aligned; only the tail is zeroed
    if pad:
        xdt[:, :, l:].zero_()
    _mul_into(xdt[:, :, :l], xs.transpose(1, 2), dt_hm[:, :, :l, None], inplace)
    causal = torch.ones(q, q, dtype=cd, device=x.device).tril()
    scores = _decay_matrix(acs, causal, inplace)  # (b, h, c, q, q)
    cb = (Cg @ Bg.transpose(-1, -2)).mul_(causal).unsqueeze(2)  # (b, g, 1, c, q, q), zero above the diagonal
    scores = scores.view(b, g, hg, c, q, q)
    scores = scores.mul_(cb) if inplace else scores * cb
    y_diag = scores @ xdt.view(b, g, hg, c, q, p)  # (b, g, hg, c, q, p)

    # 2. The state entering each chunk, (b, g, c, n, hg*p): chunk k's own contribution at its end
    #    is B^T (x dt exp(acs_end - acs)), one matmul over all heads of a group; then a short loop
    #    passes states between chunks. The last chunk's own state is never read, so never built.
    y = None
    if c > 1:
        m = (c - 1) * q
        w = (dt_hm * torch.exp(acs[..., -1:] - acs).view(b, h, lp))[:, :, :m].transpose(1, 2).contiguous()[..., None]
        xw = xs.new_empty(b, m, h, p)  # token-major
        _mul_into(xw, xs[:, :m], w, inplace)
        xw = xw.view(b, c - 1, q, g, hg * p).permute(0, 3, 1, 2, 4)  # a free view when g == 1
        chunk_decay = torch.exp(acs[..., -1]).view(b, g, hg, c).permute(0, 1, 3, 2)[..., None, :, None]
        Bt = Bg[:, :, :-1].transpose(-1, -2)
        if inplace:
            prev = xs.new_empty(b, g, c, n, hg * p)
            prev[:, :, 0].zero_()
            torch.matmul(Bt, xw, out=prev[:, :, 1:])
            steps = prev.view(b, g, c, n, hg, p)
            for k in range(1, c - 1):
                steps[:, :, k + 1].addcmul_(steps[:, :, k], chunk_decay[:, :, k])
        elif torch.compiler.is_compiling():
            prev = _entering_states(acs[..., -1].view(b, g, hg, c), (Bt @ xw).view(b, g, c - 1, n, hg, p))
            prev = prev.reshape(b, g, c, n, hg * p)
        else:
            states = (Bt @ xw).view(b, g, c - 1, n, hg, p)
            entering = [xs.new_zeros(b, g, n, hg, p)]
            for k in range(c - 1):
                entering.append(entering[-1] * chunk_decay[:, :, k] + states[:, :, k])
            prev = torch.stack(entering, dim=2).view(b, g, c, n, hg * p)

        # 3. Read the entering state out at every position: exp(acs_i) C_i . S_k, then add y_diag.
        #    In place, the read-out goes into x*dt's memory (dead after step 1) and one pass scales and adds.
        read = torch.exp(acs).view(b, g, hg, c, q).permute(0, 1, 3, 4, 2).unsqueeze(-1)
        y_diag = y_diag.permute(0, 1, 3, 4, 2, 5)
        if inplace:
            y = torch.matmul(Cg, prev, out=xdt.view(b, g, c, q, hg * p)).view(b, g, c, q, hg, p)
            y = torch.addcmul(y_diag, y, read, out=y)
        else:
            y = (Cg @ prev).view(b, g, c, q, hg, p) * read + y_diag
    else:
        y = y_diag.permute(0, 1, 3, 4, 2, 5)
    y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, lp, h, p)[:, :l]  # token-major; a view when g == 1
    return _skip_and_gate(y, xs, D, z, inplace)


def traced_length(seqlen: int, chunk_size: int) -> int:
    """The length to pad `seqlen` frames to before `ssd_scan` is traced by torch.compile with a symbolic length,
    so that every length takes one graph: more than two chunks, the last one partial and at least two frames short
    of a whole chunk. Shorter inputs (one chunk: no state passing; two: a single state, which broadcasts), whole
    numbers of chunks (no tail to pad) and a tail one frame short (a padding of size 1, which the tracer
    specialises) each take other branches or strides in the scan, and each compiled a graph of its own (8 graphs,
    Dynamo's limit, over a fold's batch lengths, then eager)."""
    length = max(seqlen, 2 * chunk_size + 1)
    if chunk_size > 1 and length % chunk_size == 0:
        length += 1
    if chunk_size > 2 and length % chunk_size == chunk_size - 1:
        length += 2
    return length


def _entering_states(log_decay: Tensor, states: Tensor) -> Tensor:
    """The state entering each of c chunks, (b, g, c, n, hg, p), from each chunk's own end state `states`
    (b, g, c - 1, n, hg, p; the last chunk's is never read) and its log-decay over the chunk (b, g, hg, c), as one
    weighted sum: chunk k receives chunk j's state (j < k) decayed over chunks j+1..k-1. The loop that passes
    states from chunk to chunk is unrolled by `torch.compile`, once per chunk count; this form has none."""
    inclusive = log_decay.cumsum(-1)
    exclusive = inclusive - log_decay
    c = log_decay.shape[-1]
    gaps = exclusive[..., :, None] - inclusive[..., None, : c - 1]  # (b, g, hg, k, j): log decay from j's end to k
    later = torch.ones(c, c - 1, dtype=torch.bool, device=log_decay.device).tril(-1)  # j < k
    weights = torch.exp(gaps.masked_fill(~later, float("-inf")))
    with torch.autocast(log_decay.device.type, enabled=False):  # a small sum, kept in float32 as the loop's adds are
        return torch.einsum("bghkj,bgjnhp->bgknhp", weights, states.to(weights.dtype))


def _scan_by_chunk(device: torch.device) -> bool:
    """Whether `ssd_scan` without autograd runs chunk by chunk (CPU: cache-sized temporaries) rather than
    all chunks at once (GPU: few large kernels)."""
    return device.type == "cpu"


def _ssd_scan_by_chunk(xs: Tensor, dt: Tensor, A: Tensor, Bs: Tensor, Cs: Tensor, q: int, D: Tensor | None) -> Tensor:
    """The chunked SSD one chunk at a time (CPU, no autograd): y + D x, (batch, seqlen, nheads, headdim) token-major.

    The same products as `ssd_scan`'s batched form, but every temporary is one chunk's (~0.5 MB at
    the model's shapes) and stays in the CPU's L2 cache, and the state passed between chunks is one
    (dstate x heads*headdim) array instead of one per chunk: large arrays are only read (x, B, C)
    and written (y) once. The tail chunk is simply shorter, so nothing is padded.

    Inside a chunk, dt scales the columns of the (chunk x chunk) scores rather than x, and a per-head
    D sits on their diagonal: y_diag = (scores dt_j + D I) @ x reads x where it lies (no head-major
    copy of x * dt) and adds the skip in the same matmul. Each op costs its dispatch (~5-10 us, which
    threads do not shorten), so per-chunk views come from one `split`/`unbind` each.
    """
    b, l, h, p = xs.shape
    g, n = Bs.shape[2], Bs.shape[3]
    hg = h // g
    c = math.ceil(l / q)
    dt_chunks = F.pad(dt, (0, 0, 0, c * q - l)).permute(0, 2, 1).reshape(b, h, c, q)  # the tail padded with dt = 0
    acs = (dt_chunks * A[:, None, None]).cumsum(-1)  # log-decays cumulated inside each chunk
    read = acs.exp()
    into_state = torch.exp(acs[..., -1:] - acs).mul_(dt_chunks).permute(0, 2, 3, 1)[..., None]  # (b, c, q, h, 1)
    chunk_decay = read[..., -1].view(b, g, hg, c).permute(3, 0, 1, 2)[..., None, :, None]  # (c, b, g, 1, hg, 1)
    read = read.view(b, g, hg, c, q).permute(3, 0, 1, 4, 2)[..., None]  # (c, b, g, q, hg, 1)
    causal = torch.ones(q, q, dtype=xs.dtype, device=xs.device).tril()
    d = None if D is None else D.to(xs.dtype)
    diag_d = d is not None and d.dim() == 1
    if diag_d:
        d = d[:, None].expand(b, h, q)
    y = xs.new_empty(b, l, h, p)
    state = xs.new_zeros(b * g, n, hg * p)
    steps = state.view(b, g, n, hg, p)
    # Per-chunk operands as 3-D batches for `torch.bmm` (views when batch == 1), each list from one split.
    x_chunks = xs.split(q, dim=1)  # (b, m, h, p) token-major
    xh_chunks = xs.permute(0, 2, 1, 3).split(q, dim=2)  # (b, h, m, p) head-major views of the same memory
    C3 = Cs.transpose(1, 2).reshape(b * g, l, n)
    B3 = Bs.transpose(1, 2).reshape(b * g, l, n)
    C_chunks, B_chunks, Bt_chunks = C3.split(q, dim=1), B3.split(q, dim=1), B3.transpose(1, 2).split(q, dim=2)
    y_chunks = y.view(b, l, g, hg, p).permute(0, 2, 1, 3, 4).split(q, dim=2)  # (b, g, m, hg, p) views of y
    for k in range(c):
        x_k, C_k, B_k, y_k = x_chunks[k], C_chunks[k], B_chunks[k], y_chunks[k]
        m = x_k.shape[1]
        mask = causal if m == q else causal[:m, :m]
        acs_k, dt_k = (acs[:, :, k], dt_chunks[:, :, k]) if m == q else (acs[:, :, k, :m], dt_chunks[:, :, k, :m])
        scores = _decay_matrix(acs_k, mask, inplace=True).mul_(dt_k.unsqueeze(-2))  # (b, h, m, m), columns * dt_j
        scores.view(b * g, hg, m, m).mul_(torch.bmm(C_k, B_k.transpose(1, 2)).mul_(mask).unsqueeze(1))
        if diag_d:
            scores.diagonal(dim1=-2, dim2=-1).add_(d if m == q else d[..., :m])
        y_diag = torch.bmm(scores.view(b * h, m, m), xh_chunks[k].reshape(b * h, m, p))
        y_diag = y_diag.view(b, g, hg, m, p).permute(0, 1, 3, 2, 4)
        if k == 0:
            y_k.copy_(y_diag)
        else:
            from_state = torch.bmm(C_k, state).view(b, g, m, hg, p)
            torch.addcmul(y_diag, from_state, read[k] if m == q else read[k, :, :, :m], out=y_k)
        if d is not None and not diag_d:
            y[:, k * q : k * q + m].addcmul_(x_k, d)
        if k < c - 1:
            xw = (x_k * into_state[:, k]).view(b, m, g, hg * p).transpose(1, 2).reshape(b * g, m, hg * p)
            steps.mul_(chunk_decay[k])
            state.baddbmm_(Bt_chunks[k], xw)
    return y


_MAMBA_SCAN: Callable[..., Tensor] | None = None
_MAMBA_IMPORT_TRIED = False
# mamba-ssm's kernels are autotuned for each new family of shapes: every config compiled, then timed. Triton keeps
# the compiled kernels on disk (TRITON_CACHE_DIR) but the timings only when asked, and it reads that when the
# kernels are defined, at their import: asked here, a later process on the node times nothing it timed before.
# A value the user set wins.
AUTOTUNE_CACHE_ENV = {"TRITON_CACHE_AUTOTUNING": "1"}


def _import_mamba_chunk_scan() -> Callable[..., Tensor] | None:
    """mamba-ssm's Triton `mamba_chunk_scan_combined`, or None when it cannot be imported.

    mamba-ssm 2.3's package `__init__` imports its compiled CUDA extension even though the SSD
    kernels are pure Triton, so a wheel built with MAMBA_SKIP_CUDA_BUILD fails a plain import.
    In that case the Triton module is loaded under an empty `mamba_ssm` package shell. Its autotuning results are
    kept on disk (`AUTOTUNE_CACHE_ENV`).
    """
    global _MAMBA_SCAN, _MAMBA_IMPORT_TRIED
    if _MAMBA_IMPORT_TRIED:
        return _MAMBA_SCAN
    _MAMBA_IMPORT_TRIED = True
    for key, value in AUTOTUNE_CACHE_ENV.items():
        os.environ.setdefault(key, value)
    name = "mamba_ssm.ops.triton.ssd_combined"
    try:
        _MAMBA_SCAN = importlib.import_module(name).mamba_chunk_scan_combined
        return _MAMBA_SCAN
    except Exception as err:  # ImportError, or the CUDA extension failing to load
        first_error = err
    spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        logger.debug("mamba-ssm unavailable: %s", first_error)
        return None
    shell = types.ModuleType("mamba_ssm")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = shell
    try:
        _MAMBA_SCAN = importlib.import_module(name).mamba_chunk_scan_combined
    except Exception as err:
        del sys.modules["mamba_ssm"]
        logger.debug("mamba-ssm Triton kernels unavailable: %s (package import: %s)", err, first_error)
    return _MAMBA_SCAN


def mamba_ssm_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> Tensor:
    """mamba-ssm's fused Triton kernel (CUDA only); raises RuntimeError when it is unavailable.

    Under `torch.compile` the same kernels run through `mamba_ssm_op` (a custom op the compiler keeps in its graph),
    with the gate z, if any, applied after it as the kernel does (y * silu(z))."""
    scan = _import_mamba_chunk_scan()
    if scan is None:
        raise RuntimeError("mamba-ssm is not importable: install the `gpu` extra on a CUDA machine (see README)")
    if not x.is_cuda:
        raise RuntimeError("the mamba_ssm backend needs CUDA tensors")
    if torch.compiler.is_compiling():
        y = mamba_ssm_op.chunk_scan(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                    dt_limit=dt_limit)
        return y if z is None else y * F.silu(z)
    return scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)


_LOGGED_CHOICES: set[tuple[str, str]] = set()


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" into "mamba_ssm" (CUDA and importable) or "torch"; log each choice once (at an eager call).
    On CUDA, "auto" and "mamba_ssm" import mamba-ssm here: called eagerly before compiling (`step_module`), the
    import and the environment it sets (`AUTOTUNE_CACHE_ENV`) stay out of the graph, where setting an environment
    variable splits it."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown SSD backend {backend!r}; choose one of {BACKENDS}")
    importable = backend != "torch" and device.type == "cuda" and _import_mamba_chunk_scan() is not None
    chosen = ("mamba_ssm" if importable else "torch") if backend == "auto" else backend
    key = (backend, chosen)
    if key not in _LOGGED_CHOICES and not torch.compiler.is_compiling():  # a log call would split a compiled graph
        _LOGGED_CHOICES.add(key)
        logger.info("SSD backend: %s (asked for %s, device %s)", chosen, backend, device.type)
    return chosen


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    backend: str = "auto",
) -> Tensor:
    """SSD scan through the chosen backend ("auto" | "torch" | "mamba_ssm"); output in x's dtype."""
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
    with torch.profiler.record_function("ssd"):
        if resolve_backend(backend, x.device) == "mamba_ssm":
            return mamba_ssm_scan(x, dt, A, B, C, chunk_size, **kwargs)
        return ssd_scan(x, dt, A, B, C, chunk_size, **kwargs).to(x.dtype)


def mixer_like_inputs(
    batch: int,
    seqlen: int,
    nheads: int = 32,
    headdim: int = 64,
    ngroups: int = 1,
    dstate: int = 128,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[dict[str, Tensor], dict[str, object]]:
    """Random SSD inputs at the scales a Mamba-2 mixer produces, for tests and benchmarks.

    x, B, C are post-SiLU conv outputs (order 1), dt_bias follows mamba-ssm's init (softplus gives
    dt in [1e-3, 0.1]), A = -[1, 16], D = 1. Returns (x, dt, A, B, C) and the keyword extras.
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1e-3), math.log(0.1)
    dt0 = torch.exp(torch.rand(nheads, generator=gen, dtype=torch.float64) * (hi - lo) + lo)
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))

    def silu_noise(*shape: int) -> Tensor:
        return F.silu(torch.randn(*shape, generator=gen, dtype=torch.float64))

    inputs = dict(
        x=silu_noise(batch, seqlen, nheads, headdim),
        dt=torch.randn(batch, seqlen, nheads, generator=gen, dtype=torch.float64) * 0.5,
        A=-(torch.rand(nheads, generator=gen, dtype=torch.float64) * 15 + 1),
        B=silu_noise(batch, seqlen, ngroups, dstate),
        C=silu_noise(batch, seqlen, ngroups, dstate),
    )
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}
    extras: dict[str, object] = dict(D=torch.ones(nheads, device=device, dtype=dtype),
                                     dt_bias=dt_bias.to(device=device, dtype=dtype), dt_softplus=True)
    return inputs, extras
