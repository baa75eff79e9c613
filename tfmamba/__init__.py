"""TF-Mamba for speech emotion recognition: the model library.

Importable without Ray or MLflow. The pieces, in the order data flows through them:
corpora (manifests and their folds, `corpora.folds`) -> features (cached encoder features) -> model
(`model.ModelConfig`, `model.TFMamba`) -> losses/metrics; `config.TrainConfig` holds a model config and the
training settings, `training.fold.train_fold` trains one fold, `predict` applies a trained model, and
`commands` is the `tfmamba` command. docs/architecture.md maps every module.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build_model"]


def build_model(*args: Any, **kwargs: Any):
    """Build a TF-Mamba network or one of its ablation variants (see `tfmamba.model.build_model`)."""
    from tfmamba.model import build_model as _build_model

    return _build_model(*args, **kwargs)
