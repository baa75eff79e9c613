"""Emotion predictions for audio files with a trained model: `Predictor.load(...)`, then `predict_files`.

A model is a trainer output folder (`model.safetensors` + `model.json`), or an MLflow URI
(`runs:/<run id>/model`, `models:/tfmamba-ser/<version>`, or an artifact URI such as `s3://...` or
`mlflow-artifacts:/...`) whose artifacts hold one, either directly or inside a pyfunc model's `artifacts/`.
MLflow is imported only for those URIs.

The feature extractor named in model.json is rebuilt and checked against the model's input size.
Each clip is read at the extractor's rate (any format `tfmamba.audio` reads, stereo mixed down),
cut into windows of at most `window_seconds` (the extractor's `max_seconds`), and the class
probabilities of the windows are averaged, weighted by their frame counts: one prediction per clip.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from tfmamba.audio import load_audio
from tfmamba.device import is_out_of_memory, out_of_memory_as, pick_device
from tfmamba.errors import ConfigError, DataError, DeviceMemoryError, first_line
from tfmamba.features.extractor import Extractor
from tfmamba.features.factory import get_extractor
from tfmamba.locations import replaced_atomically, sqlite_path
from tfmamba.model import TFMamba
from tfmamba.model_uris import download_model, is_artifact_uri, is_mlflow_uri, models_near
from tfmamba.training.outputs import MODEL_JSON, MODEL_WEIGHTS, load_trained_model, read_model_description

__all__ = ["AUDIO_SUFFIXES", "Prediction", "Predictor", "find_audio", "resolve_model", "write_csv"]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp4", ".m4a", ".aac", ".webm",
                            ".aiff", ".aif"})
DEFAULT_WINDOW_SECONDS = 30.0
WINDOWS_PER_BATCH = 8


@dataclass(frozen=True)
class Prediction:
    """One clip's outcome: the predicted label and class probabilities, or the error that stopped it."""

    path: str
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    windows: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self, labels: list[str]) -> dict[str, Any]:
        """A flat CSV row: path, label, prob_<label> per class, seconds, windows, error."""
        row: dict[str, Any] = {"path": self.path, "label": self.label or ""}
        row |= {f"prob_{name}": (f"{self.probabilities[name]:.6f}" if self.ok else "") for name in labels}
        return row | {"seconds": f"{self.seconds:.3f}", "windows": self.windows, "error": self.error or ""}


def resolve_model(ref: str | Path, into: str | Path, tracking_uri: str | None = None) -> Path:
    """The local trainer output folder of `ref`: the folder itself, or MLflow artifacts downloaded under `into`."""
    ref = str(ref)
    if not (is_mlflow_uri(ref) or is_artifact_uri(ref)):
        folder = Path(ref)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such model folder (give a trainer output folder, runs:/<id>/model, "
                            f"models:/<name>/<version> or the artifact URI of a logged model)")
        return folder
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as err:
        raise ConfigError(f"{ref}: MLflow and artifact URIs need the mlflow package ({err})") from err
    uri = tracking_uri or mlflow.get_tracking_uri()
    if is_mlflow_uri(ref) and (database := sqlite_path(uri)) is not None and not database.is_file():
        raise DataError(f"{ref}: no MLflow store at {uri} (give --tracking-uri or set MLFLOW_TRACKING_URI to the "
                        f"store the sweep wrote to)")
    failed = f"{ref}: could not download the model" + (" from MLflow" if is_mlflow_uri(ref) else "")
    try:
        local = download_model(ref, uri, into)
    except ImportError as err:  # e.g. s3:// without boto3: MLflow imports a store's client when it first reads
        raise DataError(f"{failed}: MLflow reads {urlparse(ref).scheme}: URIs with the package '{err.name}', which "
                        f"is not installed") from err
    except (MlflowException, OSError) as err:
        hint = models_near(ref, uri)
        raise DataError(f"{failed} ({' '.join(str(err).split())})" + (f"; {hint}" if hint else "")) from err
    return _model_folder_in(local, ref)


def _model_folder_in(local: Path, ref: str) -> Path:
    """A trainer folder (model.json at the top) or a pyfunc model holding one under artifacts/."""
    if (local / MODEL_JSON).is_file():
        return local
    found = sorted(p.parent for p in local.rglob(MODEL_JSON) if (p.parent / MODEL_WEIGHTS).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{ref}: the MLflow artifacts hold no tfmamba model ({MODEL_JSON} + {MODEL_WEIGHTS})")
    raise DataError(f"{ref}: the MLflow artifacts hold {len(found)} tfmamba models; point at one of them")


def check_description(folder: Path) -> dict[str, Any]:
    """model.json, checked before any weights are read: format version, feature spec, sizes, labels."""
    path = folder / MODEL_JSON
    description = read_model_description(folder)
    missing = [key for key in ("model", "labels", "feature") if not isinstance(description.get(key), (dict, list))]
    if missing:
        raise DataError(f"{path}: missing {missing}")
    feature, model = description["feature"], description["model"]
    if not feature.get("extractor") or not isinstance(feature.get("dim"), int):
        raise DataError(f"{path}: the feature spec needs 'extractor' and an integer 'dim', got {feature}")
    if model.get("input_dim") != feature["dim"]:
        raise DataError(f"{path}: the model takes {model.get('input_dim')}-dim input but its feature spec "
                        f"({feature['extractor']}) gives {feature['dim']}")
    if model.get("num_classes") != len(description["labels"]):
        raise DataError(f"{path}: {model.get('num_classes')} classes but {len(description['labels'])} labels")
    return description


def check_extractor(extractor: Extractor, feature: dict[str, Any], model: TFMamba, where: str) -> None:
    """The rebuilt extractor must give what the model was trained on (same dim and frame rate)."""
    if extractor.dim != model.config.input_dim:
        raise DataError(f"{where}: extractor {extractor.name!r} gives {extractor.dim}-dim features but the model "
                        f"takes {model.config.input_dim}")
    rate = feature.get("frame_rate")
    if rate is not None and abs(float(rate) - extractor.frame_rate) > 1e-6:
        raise DataError(f"{where}: extractor {extractor.name!r} runs at {extractor.frame_rate} frames/s, the model "
                        f"was trained at {rate}")
    if feature.get("revision") not in (None, extractor.revision_or_hash):
        logger.warning("%s: extractor %s is at revision %s, the model was trained on %s", where, extractor.name,
                       extractor.revision_or_hash, feature.get("revision"))


def _named_extractor(feature: dict[str, Any], where: str) -> str:
    """model.json's extractor, unless it is a local folder that this machine lacks (the cluster's copy of an
    encoder, a model fetched from MLflow elsewhere): then an error that says how to give a copy."""
    name = str(feature["extractor"])
    if os.path.isabs(name) and not os.path.isdir(name):
        raise DataError(f"{where}: the model was trained on features of the speech encoder in {name}, a folder this "
                        f"machine does not have; give a copy of that encoder (a folder, or its hub name such as "
                        f"microsoft/wavlm-large) with `tfmamba predict --extractor` (Predictor.load(extractor=...))")
    return name


def find_audio(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (missing ones too, to be reported), folders searched recursively for audio files (a folder
    without any is logged, unless nothing is found at all: the caller says that). An empty name (an unset shell
    variable) is an error, not the current folder."""
    found: list[Path] = []
    paths = list(paths)
    empty = [n for n, item in enumerate(paths, start=1) if not str(item).strip()]
    if empty:
        raise DataError(f"audio path {empty[0]} of {len(paths)} is an empty string (an unset shell variable?)")
    without_audio = []
    for item in map(Path, paths):
        if item.is_dir():
            inside = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not inside:
                without_audio.append(item)
            found.extend(inside)
        else:
            found.append(item)
    if found:  # with nothing found at all, the caller's error says it once
        for item in without_audio:
            logger.warning("%s: no audio files (%s) in this folder", item, ", ".join(sorted(AUDIO_SUFFIXES)))
    return found


def _load_weights(folder: Path, device: torch.device) -> tuple[TFMamba, dict[str, Any]]:
    """`load_trained_model`, with a damaged safetensors file reported as a DataError too."""
    from safetensors import SafetensorError

    try:
        return load_trained_model(folder, device=str(device))
    except SafetensorError as err:
        raise DataError(f"{folder / MODEL_WEIGHTS}: unreadable weights ({err})") from err


class Predictor:
    """A trained model with its feature extractor: audio in, emotion probabilities out."""

    def __init__(self, model: TFMamba, description: dict[str, Any], extractor: Extractor,
                 device: torch.device, window_seconds: float = DEFAULT_WINDOW_SECONDS, source: str = "") -> None:
        if not window_seconds > 0:
            raise ConfigError(f"window_seconds must be > 0, got {window_seconds}")
        self.model = model
        self.description = description
        self.extractor = extractor
        self.device = device
        self.window_seconds = float(window_seconds)
        self.source = source
        self.labels: list[str] = list(description["labels"])

    @classmethod
    def load(cls, model_ref: str | Path, device: str | None = None, window_seconds: float | None = None,
             tracking_uri: str | None = None, extractor: str | None = None) -> Predictor:
        """Load a trainer output folder or an MLflow model URI and the extractor its model.json names.

        `window_seconds` defaults to the extractor's `max_seconds` (30 s). `extractor` replaces the speech
        encoder model.json names (a folder or hub name), for a model trained on a local copy of an encoder
        that is not on this machine; it is checked against the model like the named one."""
        dev = pick_device(device)
        with tempfile.TemporaryDirectory(prefix="tfmamba-model-") as tmp:
            folder = resolve_model(model_ref, tmp, tracking_uri)
            check_description(folder)
            model, description = _load_weights(folder, dev)
        feature = description["feature"]
        window = window_seconds or DEFAULT_WINDOW_SECONDS
        encoder = extractor or _named_extractor(feature, str(model_ref))
        rebuilt = get_extractor(encoder, layer=feature.get("layer"), device=str(dev), max_seconds=window)
        check_extractor(rebuilt, feature, model, str(model_ref))
        window = rebuilt.max_seconds or window
        logger.info("model %s: %s, labels %s, features %s (%d-dim), windows of %g s, on %s", model_ref,
                    model.config.variant, description["labels"], rebuilt.name, rebuilt.dim, window, dev)
        return cls(model, description, rebuilt, dev, window, source=str(model_ref))

    def predict_wave(self, wave: np.ndarray, sample_rate: int, name: str = "<wave>") -> Prediction:
        """Predict one clip given as samples: (n,) mono or (n, channels), any rate."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        if wave.ndim != 1:
            raise DataError(f"{name}: expected (samples,) or (samples, channels), got shape {wave.shape}")
        if sample_rate != self.extractor.sample_rate:
            import soxr

            wave = soxr.resample(wave, sample_rate, self.extractor.sample_rate, quality="HQ").astype(np.float32)
        if not np.all(np.isfinite(wave)):
            raise DataError(f"{name}: samples contain NaN or Inf")
        return self._predict(wave, name)

    def predict_file(self, path: str | Path) -> Prediction:
        """Predict one audio file; raises DataError when it cannot be read."""
        return self._predict(load_audio(path, sample_rate=self.extractor.sample_rate), str(path))

    def iter_predictions(self, paths: Iterable[str | Path]) -> Iterator[Prediction]:
        """One Prediction per file, in order; a file that fails gives a Prediction with `error` set."""
        for path in paths:
            try:
                yield self.predict_file(path)
            except (DataError, DeviceMemoryError) as err:
                logger.debug("skipping %s: %s", path, err)
                yield Prediction(path=str(path), label=None, error=str(err))

    def predict_files(self, paths: Iterable[str | Path]) -> list[Prediction]:
        return list(self.iter_predictions(paths))

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """Cut a clip into windows of `window_seconds`; a tail under half a second joins the previous window."""
        return self.extractor.windows(wave, self.window_seconds)

    def _predict(self, wave: np.ndarray, name: str) -> Prediction:
        rate = self.extractor.sample_rate
        if len(wave) < self.extractor.min_samples:
            raise DataError(f"{name}: too short ({len(wave)} samples at {rate} Hz; the extractor needs at least "
                            f"{self.extractor.min_samples})")
        windows = self.windows(wave)
        total, frames_seen = self._scores_fitting(windows, name)
        average = total / max(frames_seen, 1)
        return Prediction(path=name, label=self.labels[int(average.argmax())],
                          probabilities={label: float(p) for label, p in zip(self.labels, average)},
                          seconds=len(wave) / rate, windows=len(windows))

    def _scores_fitting(self, windows: list[np.ndarray], name: str) -> tuple[np.ndarray, int]:
        """`_scores` of `WINDOWS_PER_BATCH` windows a batch, or one window a batch when those do not fit in the
        device's memory (a long clip on a small GPU); DeviceMemoryError, naming the file, if one does not fit."""
        try:
            return self._scores(windows, WINDOWS_PER_BATCH)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if len(windows) == 1:
                raise self._too_big(name, err) from err
            logger.warning("%s: %d windows of %g s at once do not fit in %s's memory (%s); one at a time", name,
                           min(len(windows), WINDOWS_PER_BATCH), self.window_seconds, self.device, first_line(err, 120))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with out_of_memory_as(lambda err: self._too_big(name, err)):
            return self._scores(windows, 1)

    def _too_big(self, name: str, err: BaseException) -> DeviceMemoryError:
        return DeviceMemoryError(f"{name}: one {self.window_seconds:g} s window does not fit in {self.device}'s memory "
                                 f"({first_line(err, 200)}); lower --window-seconds or predict with --device cpu")

    def _scores(self, windows: list[np.ndarray], per_batch: int) -> tuple[np.ndarray, int]:
        """The class probabilities of `windows` summed weighted by their frames, and the frames, `per_batch` at once."""
        total = np.zeros(len(self.labels), dtype=np.float64)
        frames_seen = 0
        for start in range(0, len(windows), per_batch):
            probs, lengths = self._probabilities(self.extractor(windows[start:start + per_batch]))
            total += (probs * lengths[:, None]).sum(axis=0)
            frames_seen += int(lengths.sum())
        return total, frames_seen

    @torch.no_grad()
    def _probabilities(self, features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (windows, classes) and frame counts of a batch of feature arrays."""
        lengths = torch.tensor([len(x) for x in features])
        batch = torch.zeros(len(features), int(lengths.max()), self.model.config.input_dim)
        for i, x in enumerate(features):
            batch[i, : len(x)] = torch.from_numpy(x)
        logits = self.model(batch.to(self.device), lengths.to(self.device)).logits.float()
        return torch.softmax(logits, dim=-1).cpu().numpy().astype(np.float64), lengths.numpy()


def write_csv(path: str | Path, predictions: list[Prediction], labels: list[str]) -> Path:
    """Write predictions (failed files included, with their error) to a CSV, atomically."""
    import csv

    path = Path(path)
    columns = ["path", "label", *(f"prob_{label}" for label in labels), "seconds", "windows", "error"]
    with replaced_atomically(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(p.to_row(labels) for p in predictions)
    return path
