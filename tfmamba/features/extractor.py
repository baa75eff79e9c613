"""The extractor interface (`Extractor`), implemented by `fbank.FbankExtractor` and `encoder.EncoderExtractor`
and built by name by `factory.get_extractor`.

An extractor turns 16 kHz mono waves into (frames, dim) float32 arrays. Its identity
(`name`, `revision_or_hash`, `layer`) is written into the feature cache so that a cache
built with one extractor is never read as if it came from another.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FBANK_NAMES = ("fbank", "fbank-cmvn")
# What features are: an extractor's identity (`Extractor.describe`), kept in a cache's metadata and a model.json.
FEATURE_SPEC: tuple[str, ...] = ("extractor", "revision", "layer", "dim", "frame_rate", "sample_rate")


class Extractor(ABC):
    """Waves in, frames out. Long waves are cut into `max_seconds` windows and the outputs joined."""

    name: str
    dim: int
    frame_rate: float
    revision_or_hash: str
    layer: int | None = None
    sample_rate: int = SAMPLE_RATE
    min_samples: int = 400
    max_seconds: float | None = None

    def __init__(self) -> None:
        self.windowed = 0

    def describe(self) -> dict:
        """The identity written into a cache's metadata (and compared when it is read): `FEATURE_SPEC`'s keys."""
        values = (self.name, self.revision_or_hash, self.layer, int(self.dim), float(self.frame_rate),
                  int(self.sample_rate))
        return dict(zip(FEATURE_SPEC, values, strict=True))

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Extract each wave; a wave longer than `max_seconds` is processed in windows and concatenated."""
        pieces: list[np.ndarray] = []
        owners: list[int] = []
        for i, wave in enumerate(waves):
            windows = self.windows(np.asarray(wave, dtype=np.float32))
            if len(windows) > 1:
                self.windowed += 1
                log.debug("wave %d: %.1f s processed in %d windows", i, len(wave) / self.sample_rate, len(windows))
            pieces.extend(windows)
            owners.extend([i] * len(windows))
        outs = self._extract(pieces) if pieces else []
        joined: list[list[np.ndarray]] = [[] for _ in waves]
        for owner, out in zip(owners, outs):
            joined[owner].append(out)
        return [np.concatenate(parts, axis=0).astype(np.float32, copy=False) for parts in joined]

    def windows(self, wave: np.ndarray, seconds: float | None = None) -> list[np.ndarray]:
        """Consecutive windows (views) of `seconds` (default `max_seconds`; None or 0: the whole wave); a tail
        shorter than half a second (or `min_samples`) joins the previous window."""
        seconds = self.max_seconds if seconds is None else seconds
        if not seconds:
            return [wave]
        size = int(seconds * self.sample_rate)
        starts = list(range(0, len(wave), size)) or [0]
        if len(starts) > 1 and len(wave) - starts[-1] < max(self.min_samples, self.sample_rate // 2):
            starts.pop()  # fold a short tail into the previous window
        ends = starts[1:] + [len(wave)]
        return [wave[s:e] for s, e in zip(starts, ends)]

    @abstractmethod
    def _extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Extract a batch of waves, each at most `max_seconds` long."""


def canonical_name(name: str) -> str:
    """The name stored in a cache: a local folder becomes its absolute path, anything else is kept."""
    if name in FBANK_NAMES:
        return name
    if os.path.isdir(name):
        return os.path.abspath(name).rstrip(os.sep)
    return name
