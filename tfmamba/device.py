"""Which torch device a process computes on, chosen in one place for training, feature extraction and prediction."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from tfmamba.errors import ConfigError, first_line


def pick_device(device: str | None) -> torch.device:
    """`device` if given (ConfigError if this machine cannot compute there), else this worker's GPU (LOCAL_RANK,
    as torchrun and Ray Train set it) or the CPU."""
    if device:
        problem = device_problem(device)
        if problem:
            raise ConfigError(f"--device {device}: {problem}")
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local if local < torch.cuda.device_count() else 0)
    return torch.device("cpu")


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU's out-of-memory error (`torch.OutOfMemoryError`), or a host allocation the CPU allocator refused."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError)
                                                        and "can't allocate memory" in str(err))


@contextmanager
def out_of_memory_as(error: Callable[[BaseException], Exception]) -> Iterator[None]:
    """Within it, running out of memory (`is_out_of_memory`) raises `error(err)` instead, chained to it; any other
    error goes on as it was. `error` is called then, so it sees the caller's variables as they are at that point."""
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        raise error(err) from err


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without the host waiting: a host tensor bound for a GPU is copied from pinned
    memory (pinned first if it is not), since a copy from ordinary host memory synchronises the stream. Under
    `torch.compile` the copy is the graph's (Dynamo cannot trace pinning): the loader's tensors are pinned already."""
    if tensor.device == device:
        return tensor
    if (device.type == "cuda" and tensor.device.type == "cpu" and not torch.compiler.is_compiling()
            and not tensor.is_pinned()):
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def device_problem(name: str) -> str | None:
    """Why this process cannot compute on torch device `name` (and what there is instead), or None."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        return f"not a torch device ({first_line(err)})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            return f"{why} (torch {torch.__version__}); use --device cpu or leave it out"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here; use --device cpu or leave it out"
    return None
