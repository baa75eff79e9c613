"""Cached features: extractors (fbank, transformers encoders), the Parquet store, and training datasets.

Flow: `get_extractor(name)` turns waves into (frames, dim) arrays, `build_cache` writes them into a
`FeatureStore` (sharded Parquet + metadata JSON), and `FeatureDataset` / `pad_collate` /
`LengthBucketSampler` read the store back for training. Submodules are imported on demand so
that importing this package does not pull in torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Extractor": "tfmamba.features.extractor",
    "get_extractor": "tfmamba.features.extractor",
    "FbankExtractor": "tfmamba.features.fbank",
    "EncoderExtractor": "tfmamba.features.encoder",
    "FeatureStore": "tfmamba.features.store",
    "FeatureWriter": "tfmamba.features.writer",
    "build_cache": "tfmamba.features.build",
    "BuildReport": "tfmamba.features.build",
    "FeatureDataset": "tfmamba.features.dataset",
    "LengthBucketSampler": "tfmamba.features.dataset",
    "pad_collate": "tfmamba.features.dataset",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tfmamba.features' has no attribute {name!r}")
