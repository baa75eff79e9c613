"""Which torch device a process computes on, chosen in one place for training, feature extraction and prediction."""

from __future__ import annotations

import os

import torch


def pick_device(device: str | None) -> torch.device:
    """`device` if given, else this worker's GPU (LOCAL_RANK, as torchrun and Ray Train set it) or the CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local if local < torch.cuda.device_count() else 0)
    return torch.device("cpu")
