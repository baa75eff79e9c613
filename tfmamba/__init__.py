"""TF-Mamba for speech emotion recognition: the model library.

Importable without Ray or MLflow. The pieces, in the order data flows through them:
corpora (manifests) -> features (cached encoder features) -> folds -> model -> losses/metrics.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build_model"]


def build_model(*args: Any, **kwargs: Any):
    """Build a TF-Mamba network or one of its ablation variants (see `tfmamba.model.build_model`)."""
    from tfmamba.model import build_model as _build_model

    return _build_model(*args, **kwargs)
