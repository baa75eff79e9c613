"""Any transformers speech encoder (WavLM, HuBERT, wav2vec2, the Whisper encoder) as a feature extractor.

Loaded by hub name or local path through `AutoFeatureExtractor` + `AutoModel`. Batches are
padded the way each feature extractor says: with `return_attention_mask` the mask goes to the
model and valid output frames come from `_get_feat_extract_output_lengths`; without it (models
whose conv stack uses group norm, such as wav2vec2-base) padding would change the outputs, so
each wave runs on its own. Whisper pads every input to 30 s; its outputs are cropped to the
frames that cover real audio, and windows never exceed 30 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from tfmamba.device import pick_device
from tfmamba.errors import ConfigError, DataError
from tfmamba.features.extractor import SAMPLE_RATE, Extractor, canonical_name

log = logging.getLogger(__name__)

WHISPER_MAX_SECONDS = 30.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# WavLM's attention gives torch a bool padding mask beside its float position bias; torch warns on every batch.
MASK_TYPES_WARNING = "Support for mismatched key_padding_mask and attn_mask"


def weights_hash(folder: str | os.PathLike) -> str:
    """sha256 over the weight files of a local model folder (names and bytes), so a retrained model reads as new."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise DataError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in model folder {folder}")
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _check_local_folder(name_or_path: str) -> None:
    """A path-like name must be a folder holding config.json: say so before transformers guesses at a hub name."""
    folder = Path(name_or_path).expanduser()
    if not name_or_path.startswith(("/", ".", "~")) and not folder.is_dir():
        return
    if not folder.is_dir():
        raise ConfigError(f"{name_or_path}: no such model folder (give a saved model's folder, or a hub name "
                          f"such as microsoft/wavlm-large)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{name_or_path}: no config.json in this model folder (save the model with "
                          f"save_pretrained, or give a hub name such as microsoft/wavlm-large)")


def _truncated_hint(err: Exception) -> str:
    if isinstance(err, (SafetensorError, pickle.UnpicklingError)) or "failed reading zip archive" in str(err):
        return " (a weights file cut short, e.g. by an interrupted copy or download: copy or download it again)"
    return ""


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """Hide transformers' own "Loading weights" bar (the hub's download bars stay): consoles stay quiet."""
    from transformers.utils.logging import set_tqdm_hook

    previous = set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_tqdm_hook(previous)


def _receptive_field(kernels: list[int], strides: list[int]) -> int:
    field = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        field = (field - 1) * stride + kernel
    return field


class EncoderExtractor(Extractor):
    """Hidden states of one layer (default: the last) of a pretrained speech encoder, float32 (frames, hidden)."""

    def __init__(self, name_or_path: str, layer: int | None = None, device: str | None = None,
                 max_seconds: float | None = 30.0) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        self.name = canonical_name(name_or_path)
        _check_local_folder(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load speech encoder {name_or_path!r}: {err}") from err
        if config.model_type != "whisper" and not hasattr(config, "conv_stride"):
            raise ConfigError(f"{name_or_path}: a {config.model_type!r} model is not a speech encoder; give a "
                              f"WavLM, HuBERT, wav2vec2 or Whisper model (a hub name or a saved folder)")
        try:
            self.processor = AutoFeatureExtractor.from_pretrained(name_or_path)
            with _no_loading_bar():
                model = AutoModel.from_pretrained(name_or_path)
        except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
            raise ConfigError(f"cannot load speech encoder {name_or_path!r}: {err}{_truncated_hint(err)}") from err
        self.is_whisper = config.model_type == "whisper"
        self.model = (model.get_encoder() if self.is_whisper else model).eval()
        self.device = pick_device(device)
        self.model.to(self.device)
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)
        n_layers = int(getattr(config, "encoder_layers", None) or config.num_hidden_layers)
        if layer is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(f"layer {layer} out of range for {name_or_path}: 0 (input embeddings) .. {n_layers}")
        self.layer = None if layer is None or layer in (n_layers, -1) else layer % (n_layers + 1)
        self.use_mask = bool(getattr(self.processor, "return_attention_mask", False))
        if self.is_whisper:
            self.frame_rate = SAMPLE_RATE / (self.processor.hop_length * 2)
            self.min_samples = self.processor.hop_length * 2
            limit = WHISPER_MAX_SECONDS
            self.max_seconds = min(max_seconds, limit) if max_seconds else limit
        else:
            strides, kernels = list(config.conv_stride), list(config.conv_kernel)
            self.frame_rate = SAMPLE_RATE / math.prod(strides)
            self.min_samples = _receptive_field(kernels, strides)
            self.max_seconds = max_seconds
        if os.path.isdir(name_or_path):
            self.revision_or_hash = weights_hash(name_or_path)
        else:
            self.revision_or_hash = getattr(config, "_commit_hash", None) or "unknown"
        if not self.use_mask and not self.is_whisper:
            log.info("%s: its feature extractor gives no attention mask, so each wave runs unpadded, one at a time", self.name)

    def _extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if self.is_whisper or self.use_mask:
            return self._run(waves)
        return [out for wave in waves for out in self._run([wave])]

    def _run(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        inputs = self.processor(
            [np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=SAMPLE_RATE,
            return_tensors="pt", return_attention_mask=self.use_mask,
            **({} if self.is_whisper else {"padding": True}),
        )
        key = "input_features" if self.is_whisper else "input_values"
        kwargs = {key: inputs[key].to(self.device), "output_hidden_states": self.layer is not None}
        if self.use_mask and not self.is_whisper:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MASK_TYPES_WARNING, category=UserWarning)
            out = self.model(**kwargs)
            hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
            valid = self._valid_frames(waves, hidden.shape[1])
            hidden = hidden.float().cpu().numpy()
        return [hidden[i, :n] for i, n in enumerate(valid)]

    def _valid_frames(self, waves: list[np.ndarray], padded: int) -> list[int]:
        """Output frames that cover real samples of each wave."""
        lengths = torch.tensor([len(w) for w in waves])
        if self.is_whisper:
            lengths = lengths // self.processor.hop_length
        fn = getattr(self.model, "_get_feat_extract_output_lengths", None)
        if fn is None:
            return [padded] * len(waves)
        return [min(int(n), padded) for n in fn(lengths)]
