"""`get_extractor`: an extractor by name (the built-in fbank or a transformers encoder)."""

from __future__ import annotations

from tfmamba.errors import ConfigError
from tfmamba.features.encoder import EncoderExtractor
from tfmamba.features.extractor import FBANK_NAMES, Extractor
from tfmamba.features.fbank import FbankExtractor


def get_extractor(
    name: str,
    layer: int | None = None,
    device: str | None = None,
    max_seconds: float | None = 30.0,
) -> Extractor:
    """Build an extractor: `fbank` / `fbank-cmvn`, or any transformers speech encoder by hub name or local path."""
    if not name:
        raise ConfigError("extractor name is empty")
    if name in FBANK_NAMES:
        if layer is not None:
            raise ConfigError(f"extractor {name!r} has no layers; drop --layer")
        return FbankExtractor(cmvn=name == "fbank-cmvn", max_seconds=max_seconds)
    return EncoderExtractor(name, layer=layer, device=device, max_seconds=max_seconds)
