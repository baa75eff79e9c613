"""Per-epoch training checkpoints that a restarted fold resumes from exactly.

A checkpoint is one self-contained folder (what the trainer hands to its reporter, and what Ray
copies to storage):

    weights.safetensors   the model after the epoch
    best.safetensors      the best epoch's weights so far (so a resumed fold can still test them)
    state.pt              optimizer, scheduler and RNG states; tensors and plain Python values only,
                          so it loads with `torch.load(weights_only=True)`
    progress.json         epoch, history, best so far, the config and the fold's identity

It is written to a temporary sibling and renamed into place, so an interrupted write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tfmamba.errors import DataError, StorageError, write_failure
from tfmamba.metrics import with_current_names

logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
BEST = "best.safetensors"
STATE = "state.pt"
PROGRESS = "progress.json"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain lists/ints."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A detached, contiguous CPU copy of the weights (of the wrapped module under DDP)."""
    module = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_weights(weights: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    save_file(weights, str(path), metadata=metadata)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # safetensors raises several types
        raise DataError(f"{path}: unreadable weights ({err})") from err


def save_checkpoint(folder: str | Path, model: nn.Module, best_weights: dict[str, Tensor], state: dict[str, Any],
                    progress: dict[str, Any]) -> Path:
    """Write the checkpoint folder atomically (temp folder, then rename); returns `folder`."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_weights(cpu_state_dict(model), tmp / WEIGHTS)
        save_weights(best_weights, tmp / BEST)
        torch.save(state, tmp / STATE)
        (tmp / PROGRESS).write_text(json.dumps(progress, indent=1), encoding="utf-8")
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save wraps a failed write in RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        kept = ("the previous checkpoint is kept, to resume from" if has_checkpoint(folder)
                else "there is no earlier one, so a rerun starts from the beginning")
        raise StorageError(f"{folder}: cannot write the checkpoint of epoch {progress.get('epoch')} "
                           f"({write_failure(err)}); {kept}") from err
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def has_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and all((Path(folder) / name).is_file() for name in (WEIGHTS, BEST, STATE, PROGRESS))


def read_progress(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's progress record (epoch, history, best epoch, ...), its history under the current metric
    names; without loading the weights."""
    progress = json.loads((Path(folder) / PROGRESS).read_text(encoding="utf-8"))
    progress["history"] = [with_current_names(row) for row in progress.get("history", [])]
    return progress


def load_checkpoint(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, best weights, state, progress) of a checkpoint folder; DataError if it is incomplete or corrupt."""
    folder = Path(folder)
    if not has_checkpoint(folder):
        raise DataError(f"{folder}: not a complete checkpoint (needs {WEIGHTS}, {BEST}, {STATE}, {PROGRESS})")
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
        progress = read_progress(folder)
    except (OSError, RuntimeError, json.JSONDecodeError, EOFError) as err:
        raise DataError(f"{folder}: unreadable checkpoint ({err})") from err
    return load_weights(folder / WEIGHTS), load_weights(folder / BEST), state, progress
