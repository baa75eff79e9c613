"""The sweep's data: a prepared manifest (with folds.json) and its feature cache, or the demo corpus.

An ablation row may train on its own cache (Table II: one per pre-trained model); `check_cache`
checks each against the manifest, and `ensure_demo_caches` makes the ones the demo can make
offline: fbank, and tiny random WavLM / HuBERT / wav2vec2 encoders saved to disk (random
weights: they stand in for the pre-trained models to exercise the pipeline, not to rank them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tfmamba.corpora.folds import load_folds, select_folds
from tfmamba.corpora.manifest import manifest_rows, read_manifest_metadata
from tfmamba.errors import DataError
from tfmamba.features.store import CACHE_IDENTITY, read_metadata, read_skipped, resolve
from tfmamba.features.writer import WRITER_LOCK
from tfmamba.locations import absolute
from tfmamba.process_lock import held_by

logger = logging.getLogger(__name__)

# What a parent run records of a cache (as cache.<key> tags): its identity and size.
CACHE_TAGS = (*CACHE_IDENTITY, "n_utts")
TINY_PREFIX = "tiny:"
TINY_FAMILIES = ("wavlm", "hubert", "wav2vec2")


@dataclass(frozen=True)
class SweepData:
    """Absolute locations plus what the parent MLflow run records about them."""

    manifest_dir: str
    cache: str
    corpus: str
    folds: tuple[int, ...]
    cache_metadata: dict[str, object]

    def tags(self) -> dict[str, object]:
        """What a parent MLflow run records about its data: corpus, manifest, cache and the cache's identity."""
        return {"corpus": self.corpus, "manifest": self.manifest_dir, "cache": self.cache,
                **{f"cache.{key}": value for key, value in self.cache_metadata.items()}}


def resolve_data(manifest: str | None, cache: str | None, folds: list[int] | None,
                 demo_root: str | Path = "data/demo", cache_required: bool = True) -> SweepData:
    """Check the manifest, its folds and the cache (or prepare the demo data when neither is given);
    without `cache_required` a manifest may come alone (every ablation row names its own cache)."""
    if manifest is not None and cache is None and not cache_required:
        return _resolve(manifest, None, folds)
    if (manifest is None) != (cache is None):
        raise SystemExit("give both --manifest and --cache, or neither (for the built-in demo corpus)")
    if manifest is None:
        from tfmamba.demo import ensure_demo_data

        logger.info("no --manifest/--cache: using the demo corpus under %s (prepared once)", Path(demo_root).resolve())
        demo = ensure_demo_data(demo_root)
        manifest, cache = str(demo.manifest_dir), str(demo.cache)
    return _resolve(manifest, cache, folds)


def _resolve(manifest: str, cache: str | None, folds: list[int] | None) -> SweepData:
    manifest_dir = Path(manifest).resolve()
    manifest_dir = manifest_dir.parent if manifest_dir.suffix == ".parquet" else manifest_dir
    try:
        meta = read_manifest_metadata(manifest_dir)
        all_folds = load_folds(manifest_dir, meta["manifest_hash"])
    except DataError as err:
        raise SystemExit(f"--manifest {manifest}: {err}") from None
    try:
        chosen = tuple(fold.index for fold in select_folds(all_folds, folds or sorted(f.index for f in all_folds)))
    except DataError as err:
        raise SystemExit(f"--folds: {err}") from None
    cache_uri, cache_meta = ("", {}) if cache is None else check_cache(cache, manifest_dir)
    return SweepData(str(manifest_dir), cache_uri, meta["corpus"], chosen, cache_meta)


def check_cache(cache: str, manifest_dir: str | Path, what: str = "--cache") -> tuple[str, dict[str, object]]:
    """The cache's absolute location and identity (extractor, dim, ...); exits if missing, out of reach or of another
    manifest."""
    cache_uri = absolute(cache)
    try:
        filesystem, root = resolve(cache_uri)
        cache_meta = read_metadata(filesystem, root)
    except DataError as err:  # an unknown scheme, a bucket out of reach
        raise SystemExit(f"{what} {cache}: {err}") from None
    if cache_meta is None:
        raise SystemExit(f"{what} {cache}: no feature cache there (run `tfmamba features ...` first)")
    writer = held_by(cache_uri, WRITER_LOCK)
    if writer is not None:  # its folds would miss the utterances not written yet
        raise SystemExit(f"{what} {cache}: the feature cache is still being written ({writer}): wait for "
                         f"`tfmamba features` to end")
    if cache_meta.get("manifest_hash") not in (None, read_manifest_metadata(manifest_dir)["manifest_hash"]):
        raise SystemExit(f"{what} {cache}: made for another manifest than {manifest_dir} (rebuild the cache)")
    held, skipped = int(cache_meta.get("n_utts", 0)), len(read_skipped(filesystem, root))
    expected = manifest_rows(manifest_dir)
    if held + skipped < expected:  # its folds would fail on the utterances not extracted yet
        raise SystemExit(f"{what} {cache}: holds {held} of the manifest's {expected} utterances and lists {skipped} "
                         f"as skipped: its build has not finished (the same `tfmamba features` command completes it)")
    return cache_uri, {k: cache_meta.get(k) for k in CACHE_TAGS}


def cache_exists(cache: str) -> bool:
    return read_metadata(*resolve(absolute(cache))) is not None


def ensure_demo_caches(manifest_dir: str | Path, caches: dict[str, str], extractors: dict[str, str | None],
                       models_root: str | Path) -> None:
    """Make the missing `caches` whose extractor the demo has offline (`fbank`, `fbank-cmvn`, `tiny:<family>`)."""
    from tfmamba.corpora.manifest import manifest_hash, read_manifest
    from tfmamba.features.build import build_cache
    from tfmamba.features.extractor import FBANK_NAMES
    from tfmamba.features.factory import get_extractor

    manifest = read_manifest(manifest_dir)
    for row, cache in caches.items():
        name = extractors.get(row)
        if cache_exists(cache) or name is None or not (name in FBANK_NAMES or name.startswith(TINY_PREFIX)):
            continue
        if name.startswith(TINY_PREFIX):
            name = save_tiny_encoder(name[len(TINY_PREFIX):], Path(models_root) / name[len(TINY_PREFIX):])
        logger.info("row %s: making the demo cache %s with %s", row, cache, name)
        report = build_cache(manifest.table, manifest_hash(manifest), get_extractor(name), cache, progress=False)
        logger.info("%s", report.summary())


def save_tiny_encoder(family: str, folder: Path) -> str:
    """A small randomly initialised transformers speech encoder of `family`, saved to `folder` (once)."""
    import torch
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    classes = {"wavlm": (WavLMModel, WavLMConfig, {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
               "hubert": (HubertModel, HubertConfig, {"feat_extract_norm": "group"}),
               "wav2vec2": (Wav2Vec2Model, Wav2Vec2Config, {"feat_extract_norm": "group"})}
    if family not in classes:
        raise SystemExit(f"extractor {TINY_PREFIX}{family}: the demo has tiny {', '.join(TINY_FAMILIES)} encoders")
    if (folder / "config.json").exists():
        return str(folder)
    model_cls, config_cls, norm = classes[family]
    torch.manual_seed(0)
    config = config_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7,
                        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2), **norm)
    model_cls(config).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=family == "wavlm").save_pretrained(folder)
    return str(folder)
