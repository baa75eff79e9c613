"""The best trial's model as an MLflow pyfunc model, loadable by URI with its label map and feature spec.

    model = mlflow.pyfunc.load_model("models:/NAME@champion")   # --register NAME; or runs:/<trial run id>/model
    model.predict(["clip.wav", "clip.mp4"])  # audio paths (or a DataFrame with a `path` column) -> DataFrame
    model.predict([features])                # or (frames, dim) arrays of the cache's features

The model wraps a tfmamba output folder (`model.safetensors` + `model.json`); `label_map.json`
and `feature_spec.json` are logged beside it and copied into the model's metadata. The `tfmamba` and
`orchestration` code travels with the model, so that

    mlflow models serve -m models:/NAME@champion --env-manager local --host 127.0.0.1 --port 5001
    curl -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": ["path"], "data": [["/abs/clip.wav"]]}}'

answers with `{"predictions": [{"path": ..., "label": ..., "prob_<label>": ..., "error": ""}]}`.
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
REGISTERED_NAME = "tfmamba-ser"  # log_best_model's default; the sweep registers only with --register NAME
ROOT = Path(__file__).resolve().parent.parent
# Imported by the model at serving time (tfmamba and this module travel as code_paths).
SERVING_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "safetensors", "soundfile", "soxr", "av", "transformers",
                    "pyyaml", "pyarrow")
# The signature documents the output only (inputs are paths or arrays, see `predict`), so no input example.
warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)


class TFMambaPyfunc(mlflow.pyfunc.PythonModel):
    """Emotion scores for audio files (through `tfmamba.predict.Predictor`) or for cached utterance features."""

    # predict takes several input shapes (see its docstring), so it has no type hints for MLflow to validate
    # against. MLflow warns of that when the class is defined, under a filter of its own that a module's warning
    # filter cannot override, unless the class opts out of type-hint validation (as MLflow's ChatModel does).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from tfmamba.training.outputs import load_trained_model

        self.folder = context.artifacts["tfmamba_model"]
        self.model, self.description = load_trained_model(self.folder)
        self.labels = list(self.description["labels"])
        self._predictor = None  # the feature extractor is loaded on the first audio input only

    def predict(self, context, model_input, params=None):
        """`model_input`: audio paths (a list of str, or a DataFrame with a `path` column) or features (a list
        of (frames, dim) arrays, one (frames, dim) / (batch, frames, dim) array, or a DataFrame with a
        `features` column). Returns a DataFrame with `label` and one `prob_<label>` column per class; for
        audio also `path` and `error` (a file that cannot be read gets its error, not an exception)."""
        import pandas as pd

        paths = _as_paths(model_input)
        if paths is not None:
            if self._predictor is None:
                from tfmamba.predict import Predictor

                self._predictor = Predictor.load(self.folder)
            rows = [p.to_row(self.labels) for p in self._predictor.predict_files(paths)]
            frame = pd.DataFrame(rows)
            for label in self.labels:
                frame[f"prob_{label}"] = pd.to_numeric(frame[f"prob_{label}"])
            return frame[["path", "label", *[f"prob_{label}" for label in self.labels], "error"]]
        return self._predict_features(_as_items(model_input, self.model.config.input_dim,
                                                self.description["feature"]["extractor"]))

    def _predict_features(self, items: list):
        import numpy as np
        import pandas as pd
        import torch

        lengths = torch.tensor([len(x) for x in items])
        batch = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
        for i, x in enumerate(items):
            batch[i, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.float32))
        with torch.no_grad():
            probs = torch.softmax(self.model(batch, lengths).logits, dim=-1).numpy()
        frame = pd.DataFrame(probs, columns=[f"prob_{label}" for label in self.labels])
        frame.insert(0, "label", [self.labels[i] for i in probs.argmax(axis=1)])
        return frame


def _as_paths(model_input: Any) -> list[str] | None:
    """Audio paths if the input is paths (str, list of str, DataFrame with `path`), else None."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return [str(p) for p in model_input["path"]] if "path" in model_input.columns else None
    if isinstance(model_input, (str, Path)):
        return [str(model_input)]
    if isinstance(model_input, (list, tuple)) and model_input and all(isinstance(x, (str, Path)) for x in model_input):
        return [str(x) for x in model_input]
    return None


def _as_items(model_input: Any, dim: int, extractor: str) -> list:
    """The feature arrays of `model_input`, each checked: (frames, `dim`), some frames, all finite. A bad one is an
    MlflowException naming it, which a scoring server answers with 400 and the reason (a NaN gave NaN scores, and
    another extractor's dims torch's "mat1 and mat2 shapes cannot be multiplied")."""
    import numpy as np
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    def refuse(why: str) -> MlflowException:
        return MlflowException(f"tfmamba: {why}; this model takes (frames, {dim}) float features of {extractor}, or "
                               "audio paths", error_code=INVALID_PARAMETER_VALUE)

    if isinstance(model_input, pd.DataFrame):
        model_input = list(model_input["features"])
    if isinstance(model_input, np.ndarray):
        model_input = [model_input] if model_input.ndim == 2 else list(model_input)
    if isinstance(model_input, (list, tuple)) and any(isinstance(x, (str, Path)) for x in model_input):
        raise refuse("the input mixes audio paths with features")
    items = []
    for i, item in enumerate(model_input):
        try:
            array = np.asarray(item, dtype=np.float32)
        except (TypeError, ValueError):
            raise refuse(f"item {i} is not an array of numbers") from None
        if array.ndim != 2 or array.shape[1] != dim:
            raise refuse(f"item {i} has shape {array.shape}")
        if len(array) == 0:
            raise refuse(f"item {i} has no frames")
        if not np.isfinite(array).all():
            raise refuse(f"item {i} holds NaN or Inf")
        items.append(array)
    if not items:
        raise refuse("no input")
    return items


def serving_requirements() -> list[str]:
    """What the model needs at serving time, pinned to this environment's versions: the `tfmamba` code itself
    travels with the model (`code_paths`), since no package index serves this project."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def model_signature(labels: list[str]):
    """The output columns (label, one `prob_<label>` per class; `path` and `error` for audio input). The input
    is left open: paths, a DataFrame with `path`, or feature arrays are all accepted (see `predict`)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    columns = [ColSpec("string", "path", required=False), ColSpec("string", "label"),
               *[ColSpec("double", f"prob_{label}") for label in labels], ColSpec("string", "error", required=False)]
    return ModelSignature(inputs=None, outputs=Schema(columns))


@mlflow_runs.retried
def log_best_model(uri: str, run_id: str, fold_run_id: str, registered_name: str | None = REGISTERED_NAME) -> str:
    """Download the best fold's weights from its run and log them as the pyfunc model of `run_id` (with the
    `tfmamba` code, pinned requirements and an output signature, so `mlflow models serve` can run it),
    registered as a new version of `registered_name` if given; returns the logged model's URI.
    Retried as a whole while the tracking server is unreachable, like every MLflow call of the project."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow_runs.download_artifacts(uri, fold_run_id, "model", tmp)
        description = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        label_map = {str(i): label for i, label in enumerate(description["labels"])}
        (Path(tmp) / "label_map.json").write_text(json.dumps(label_map, indent=1), encoding="utf-8")
        (Path(tmp) / "feature_spec.json").write_text(json.dumps(description["feature"], indent=1), encoding="utf-8")
        mlflow.set_tracking_uri(uri)
        # MLflow warns that a Python object is pickled; this class is importable code that travels with the model
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=TFMambaPyfunc(),
                artifacts={"tfmamba_model": str(folder), "label_map": str(Path(tmp) / "label_map.json"),
                           "feature_spec": str(Path(tmp) / "feature_spec.json")},
                metadata={"label_map": label_map, "feature_spec": description["feature"],
                          "source_fold_run": fold_run_id},
                signature=model_signature(list(description["labels"])),
                code_paths=[str(ROOT / "tfmamba"), str(ROOT / "orchestration")],
                pip_requirements=serving_requirements(),
                registered_model_name=registered_name,
            )
            mlflow.log_dict(label_map, "label_map.json")
            mlflow.log_dict(description["feature"], "feature_spec.json")
    logger.info("logged the best model as %s%s", info.model_uri,
                f" (registered as models:/{registered_name}/{info.registered_model_version})" if registered_name else "")
    return info.model_uri
