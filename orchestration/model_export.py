"""The best trial's model as an MLflow pyfunc model, loadable by URI with its label map and feature spec.

    model = mlflow.pyfunc.load_model("models:/<model id>")      # or runs:/<trial run id>/model
    model.predict([features])   # a list of (frames, dim) arrays of the cache's features -> DataFrame

The model wraps a tfmamba output folder (`model.safetensors` + `model.json`); `label_map.json`
and `feature_spec.json` are logged beside it and copied into the model's metadata.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from orchestration import mlflow_runs

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
# predict takes several input shapes (see its docstring), so it has no type hints for MLflow to validate against.
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method", category=UserWarning)


class TFMambaPyfunc(mlflow.pyfunc.PythonModel):
    """Emotion scores for utterance features (what the cache holds: extractor, layer, dim in feature_spec)."""

    def load_context(self, context) -> None:
        from tfmamba.train import load_trained_model

        self.model, self.description = load_trained_model(context.artifacts["tfmamba_model"])
        self.labels = list(self.description["labels"])

    def predict(self, context, model_input, params=None):
        """`model_input`: a list of (frames, dim) arrays, one (frames, dim) / (batch, frames, dim) array,
        or a DataFrame with a `features` column; returns a DataFrame with `label` and one probability per class."""
        import numpy as np
        import pandas as pd
        import torch

        items = _as_items(model_input)
        lengths = torch.tensor([len(x) for x in items])
        batch = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
        for i, x in enumerate(items):
            batch[i, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.float32))
        with torch.no_grad():
            probs = torch.softmax(self.model(batch, lengths).logits, dim=-1).numpy()
        frame = pd.DataFrame(probs, columns=[f"prob_{label}" for label in self.labels])
        frame.insert(0, "label", [self.labels[i] for i in probs.argmax(axis=1)])
        return frame


def _as_items(model_input: Any) -> list:
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        model_input = list(model_input["features"])
    if isinstance(model_input, np.ndarray):
        model_input = [model_input] if model_input.ndim == 2 else list(model_input)
    items = [np.asarray(x, dtype=np.float32) for x in model_input]
    if not items or any(x.ndim != 2 or len(x) == 0 for x in items):
        raise ValueError("predict expects one or more (frames, dim) feature arrays")
    return items


def log_best_model(uri: str, run_id: str, fold_run_id: str) -> str:
    """Download the best fold's weights from its run and log them as the pyfunc model of `run_id`; returns its URI."""
    mlflow_client = mlflow_runs.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow_client.download_artifacts(fold_run_id, "model", tmp))
        description = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        label_map = {str(i): label for i, label in enumerate(description["labels"])}
        (Path(tmp) / "label_map.json").write_text(json.dumps(label_map, indent=1), encoding="utf-8")
        (Path(tmp) / "feature_spec.json").write_text(json.dumps(description["feature"], indent=1), encoding="utf-8")
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=TFMambaPyfunc(),
                artifacts={"tfmamba_model": str(folder), "label_map": str(Path(tmp) / "label_map.json"),
                           "feature_spec": str(Path(tmp) / "feature_spec.json")},
                metadata={"label_map": label_map, "feature_spec": description["feature"],
                          "source_fold_run": fold_run_id},
                pip_requirements=["torch", "safetensors", "numpy", "pandas", "tfmamba-sweeps"],
            )
            mlflow.log_dict(label_map, "label_map.json")
            mlflow.log_dict(description["feature"], "feature_spec.json")
    logger.info("logged the best model as %s", info.model_uri)
    return info.model_uri
