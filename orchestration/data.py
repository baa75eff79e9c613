"""The sweep's data: a prepared manifest (with folds.json) and its feature cache, or the demo corpus."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tfmamba.corpora.manifest import read_manifest_metadata
from tfmamba.features.store import read_metadata, resolve
from tfmamba.folds import load_folds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepData:
    """Absolute locations plus what the parent MLflow run records about them."""

    manifest_dir: str
    cache: str
    corpus: str
    folds: tuple[int, ...]
    fold_names: dict[int, str]
    cache_metadata: dict[str, object]


def resolve_data(manifest: str | None, cache: str | None, folds: list[int] | None,
                 demo_root: str | Path = "data/demo") -> SweepData:
    """Check the manifest, its folds and the cache (or prepare the demo data when neither is given)."""
    if (manifest is None) != (cache is None):
        raise SystemExit("give both --manifest and --cache, or neither (for the built-in demo corpus)")
    if manifest is None:
        from tfmamba.demo import ensure_demo_data

        logger.info("no --manifest/--cache: using the demo corpus under %s (prepared once)", Path(demo_root).resolve())
        demo = ensure_demo_data(demo_root)
        manifest, cache = str(demo.manifest_dir), str(demo.cache)
    manifest_dir = Path(manifest).resolve()
    manifest_dir = manifest_dir.parent if manifest_dir.suffix == ".parquet" else manifest_dir
    meta = read_manifest_metadata(manifest_dir)
    all_folds = load_folds(manifest_dir, meta["manifest_hash"])
    names = {f.index: f.name for f in all_folds}
    chosen = tuple(folds) if folds else tuple(sorted(names))
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SystemExit(f"--folds {unknown}: no such fold (the manifest has folds {sorted(names)})")
    cache_uri = cache if "://" in cache else str(Path(cache).resolve())
    cache_meta = read_metadata(*resolve(cache_uri))
    if cache_meta is None:
        raise SystemExit(f"--cache {cache}: no feature cache there (run `tfmamba features ...` first)")
    if cache_meta.get("manifest_hash") not in (None, meta["manifest_hash"]):
        raise SystemExit(f"--cache {cache}: made for another manifest than {manifest_dir} (rebuild the cache)")
    keys = ("extractor", "revision", "layer", "dim", "frame_rate", "n_utts", "manifest_hash")
    return SweepData(str(manifest_dir), cache_uri, meta["corpus"], chosen, {i: names[i] for i in chosen},
                     {k: cache_meta.get(k) for k in keys})
