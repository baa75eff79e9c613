"""The fold's output folder, which `tfmamba predict` loads, and `load_trained_model` to read it back.

    model.safetensors    best weights; with input_norm=global the statistics are folded into
                         input_proj, so the model takes raw features
    model.json           ModelConfig, labels, feature spec of the cache, input norm, versions
    train_config.yaml    the resolved TrainConfig
    metrics.json         the FoldResult
    history.csv          one row per epoch
    confusion.png        the test confusion matrix
    checkpoints/last     the newest epoch's checkpoint, which a rerun into the same folder resumes from
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from tfmamba import __version__
from tfmamba.checkpoint import has_checkpoint, load_weights, read_progress, save_weights
from tfmamba.config import TrainConfig
from tfmamba.errors import DataError, StorageError, write_failure
from tfmamba.features.extractor import FEATURE_SPEC
from tfmamba.features.store import FeatureStore
from tfmamba.locations import write_text_atomically
from tfmamba.metrics import Metrics, plot_confusion
from tfmamba.model import ModelConfig, TFMamba
from tfmamba.training.input_norm import InputNorm, fold_into_linear

FORMAT_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
CHECKPOINT_DIR = "checkpoints/last"


def write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=1))


def model_description(model_config: ModelConfig, labels: list[str], store: FeatureStore, norm: InputNorm
                      ) -> dict[str, Any]:
    """What model.json holds: enough to rebuild the network and check the features it expects."""
    feature = {key: store.metadata.get(key) for key in FEATURE_SPEC}
    feature["dim"] = store.dim
    norm_info: dict[str, Any] = {"mode": "none"}
    if norm.active:
        norm_info = {"mode": "global", "folded_into": "input_proj", "mean": norm.mean.cpu().tolist(),
                     "std": norm.std.cpu().tolist()}
    return {"format_version": FORMAT_VERSION, "tfmamba_version": __version__, "model": model_config.to_dict(),
            "labels": list(labels), "feature": feature, "input_norm": norm_info}


def deployable_weights(best: dict[str, Tensor], norm: InputNorm, model_config: ModelConfig) -> dict[str, Tensor]:
    """The best weights with the input standardisation folded into `input_proj`."""
    if not norm.active:
        return best
    probe = torch.nn.Linear(model_config.input_dim, model_config.d_model)
    probe.load_state_dict({"weight": best["input_proj.weight"], "bias": best["input_proj.bias"]})
    folded = fold_into_linear(probe, norm)
    return {**best, "input_proj.weight": folded["weight"], "input_proj.bias": folded["bias"]}


def write_outputs(out_dir: Path, config: TrainConfig, description: dict[str, Any], weights: dict[str, Tensor],
                  result: dict[str, Any], test_metrics: Metrics | None) -> None:
    """Everything but metrics.json's earlier failed versions: weights, descriptions, history, confusion plot.
    A failed write (a full disk) is a StorageError; the fold's last checkpoint, written before, is kept."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_weights(weights, out_dir / MODEL_WEIGHTS, metadata={"format": "pt"})
        write_json(out_dir / MODEL_JSON, description)
        (out_dir / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        write_history(out_dir / "history.csv", result["history"])
        if test_metrics is not None:
            plot_confusion(test_metrics, out_dir / "confusion.png",
                           title=f"fold {result['fold']} test: UA {test_metrics.ua:.3f}  WA {test_metrics.wa:.3f}")
        write_json(out_dir / "metrics.json", result)
    except (OSError, SafetensorError) as err:
        raise StorageError(f"{out_dir}: cannot write the fold's results ({write_failure(err)}); its last checkpoint "
                           "is kept, so a rerun writes them without training again") from err


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def read_model_description(folder: str | Path) -> dict[str, Any]:
    """An output folder's model.json, as a dict of this tfmamba's format version (DataError otherwise)."""
    path = Path(folder) / MODEL_JSON
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no {MODEL_JSON} ({_why_no_model(Path(folder))})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object")
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: model format version {version!r} (written by tfmamba "
                        f"{description.get('tfmamba_version', '?')}); this tfmamba reads version {FORMAT_VERSION} "
                        f"only: predict with the tfmamba that trained it, or retrain")
    return description


def _why_no_model(folder: Path) -> str:
    """What a folder without model.json is, for its error: a fold still training, or a parent of output folders."""
    checkpoint = folder / CHECKPOINT_DIR
    if has_checkpoint(checkpoint):
        try:
            progress = read_progress(checkpoint)
            reached = f"its last checkpoint is of epoch {progress['epoch']} of {progress['config']['epochs']}"
        except (OSError, ValueError, KeyError, TypeError):
            reached = f"it has a checkpoint in {CHECKPOINT_DIR}"
        return (f"its training has not finished: {reached}; the model is written when the training ends, and a "
                f"stopped `tfmamba train` goes on from there when rerun with the same --out")
    inside = sorted(str(path.parent) for path in folder.glob(f"*/{MODEL_JSON}"))
    if inside:
        return f"it holds trainer output folders; load one of them: {', '.join(inside)}"
    return "not a trainer output folder"


def load_trained_model(folder: str | Path, device: str = "cpu") -> tuple[TFMamba, dict[str, Any]]:
    """The trained network of an output folder, in eval mode on `device`, and its model.json."""
    folder = Path(folder)
    description = read_model_description(folder)
    model = TFMamba(ModelConfig.from_saved(description["model"]))
    try:
        model.load_state_dict(load_weights(folder / MODEL_WEIGHTS))
    except RuntimeError as err:
        raise DataError(f"{folder / MODEL_WEIGHTS}: weights do not fit model.json ({err})") from err
    return model.to(device).eval(), description
