"""mamba-ssm's chunked SSD scan as a PyTorch custom op, so that `torch.compile` keeps a model that uses it in one
graph.

Dynamo cannot follow mamba-ssm's own `autograd.Function` into its autotuned Triton kernels: a compiled training
step would break its graph at every scan, and each break costs the fusions around it (and a CUDA graph per piece).
Registered as an op with a shape-only ("fake") implementation, the scan is one opaque call to the compiler, its
backward another, and Inductor fuses everything else. Eager code never goes through here: `tfmamba.ssd` calls
mamba-ssm directly unless it is being compiled.
"""

import importlib
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

__all__ = ["chunk_scan", "KERNELS"]

KERNELS = "mamba_ssm.ops.triton.ssd_combined"


def _kernels() -> ModuleType:
    """mamba-ssm's Triton SSD module: already imported by `tfmamba.ssd` when it chose the mamba_ssm backend."""
    return importlib.import_module(KERNELS)


@torch.library.custom_op("tfmamba::mamba_chunk_scan", mutates_args=())
def _scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Optional[Tensor],
          dt_bias: Optional[Tensor], dt_softplus: bool, dt_min: float, dt_max: float) -> Tensor:
    out = _kernels()._mamba_chunk_scan_combined_fwd(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,
                                                    dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max))[0]
    return out.to(x.dtype).contiguous()


@_scan.register_fake
def _scan_shape(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Optional[Tensor],
                dt_bias: Optional[Tensor], dt_softplus: bool, dt_min: float, dt_max: float) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("tfmamba::mamba_chunk_scan_backward", mutates_args=())
def _scan_backward(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, out: Tensor,
                   chunk_size: int, D: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool, dt_min: float,
                   dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, ddt, dA, dB, dC, dD, _, ddt_bias, _ = _kernels()._mamba_chunk_scan_combined_bwd(
        dout, x, dt, A, B, C, out, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
        dt_limit=(dt_min, dt_max))
    pairs = ((dx, x), (ddt, dt), (dA, A), (dB, B), (dC, C), (dD, D), (ddt_bias, dt_bias))
    # In the layout the fake backward promises; an empty tensor for an input not given (an op returns no None).
    return tuple(dout.new_empty(0) if like is None else grad.to(like.dtype).reshape(like.shape).contiguous()
                 for grad, like in pairs)


@_scan_backward.register_fake
def _scan_backward_shape(dout: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, out: Tensor,
                         chunk_size: int, D: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
                         dt_min: float, dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(dout.new_empty(0) if like is None else like.new_empty(like.shape)
                 for like in (x, dt, A, B, C, D, dt_bias))


def _save(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_min, dt_max = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, output)
    ctx.settings = (chunk_size, dt_softplus, dt_min, dt_max)


def _backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Optional[Tensor], ...]:
    x, dt, A, B, C, D, dt_bias, out = ctx.saved_tensors
    chunk_size, dt_softplus, dt_min, dt_max = ctx.settings
    dx, ddt, dA, dB, dC, dD, ddt_bias = _scan_backward(dout, x, dt, A, B, C, out, chunk_size, D, dt_bias,
                                                        dt_softplus, dt_min, dt_max)
    return (dx, ddt, dA, dB, dC, None, None if D is None else dD, None if dt_bias is None else ddt_bias,
            None, None, None)


_scan.register_autograd(_backward, setup_context=_save)


def chunk_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Optional[Tensor] = None,
               dt_bias: Optional[Tensor] = None, dt_softplus: bool = False,
               dt_limit: tuple[float, float] = (0.0, float("inf"))) -> Tensor:
    """`mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, ...)` (no gate z, no initial
    states) through the custom op: the same kernels forward and backward, opaque to `torch.compile`."""
    return _scan(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, float(dt_limit[0]), float(dt_limit[1]))
