"""The feature cache on disk, and its reader.

Layout of a cache folder (local path or any URI `pyarrow.fs.FileSystem.from_uri` opens):

    features.json          metadata: extractor, revision/hash, layer, dim, frame_rate, sample_rate,
                           manifest_hash, dtype, shards [{file, n_utts, n_frames, bytes}], n_utts,
                           n_frames, created, updated, tfmamba_version, format_version
    shard-00000.parquet    one row per utterance: utt_id (string), n_frames (int32),
                           frames (large_binary: the (n_frames, dim) float16 array, C order, raw bytes)
    problems.csv           utterances skipped by the last run, with the reason
    .tmp-*                 a shard or metadata being written; renamed into place when complete

The frames column is raw bytes so that a shard's values sit in one Arrow buffer, copied in one
go into the reader's single contiguous array.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tfmamba.errors import DataError
from tfmamba.features.extractor import FEATURE_SPEC, canonical_name
from tfmamba.locations import is_uri

log = logging.getLogger(__name__)

METADATA = "features.json"
PROBLEMS = "problems.csv"
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1
# What a cache is made of: its features (`FEATURE_SPEC`) of a manifest; a cache is never extended with other ones.
CACHE_IDENTITY: tuple[str, ...] = (*FEATURE_SPEC, "manifest_hash")
DTYPE = np.float16
SCHEMA = pa.schema([("utt_id", pa.string()), ("n_frames", pa.int32()), ("frames", pa.large_binary())])


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path inside it for a local folder or a URI (file://, s3://, gs://, ...)."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise DataError(f"cannot open feature cache location {uri!r}: {err}") from err


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_metadata(fs: pafs.FileSystem, root: str) -> dict | None:
    """The cache's metadata, or None when there is no cache at `root` yet."""
    path = f"{root}/{METADATA}"
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as fh:
        try:
            return json.loads(fh.read().decode())
        except ValueError as err:
            raise DataError(f"feature cache metadata {path} is not valid JSON: {err}") from err


def manifest_hash_of(manifest: object) -> str:
    """A manifest's hash: given as a string already, or computed with `tfmamba.corpora.manifest.manifest_hash`."""
    if isinstance(manifest, str):
        return manifest
    from tfmamba.corpora.manifest import manifest_hash

    return manifest_hash(manifest)


def check_identity(meta: dict, where: str, extractor: str | None = None, layer: object = ...,
                   manifest: object = None) -> None:
    """DataError unless the cache holds features of `extractor` (and `layer`) for `manifest`."""
    if extractor is not None and canonical_name(extractor) != meta.get("extractor"):
        raise DataError(
            f"feature cache {where} holds features of extractor {meta.get('extractor')!r} "
            f"(layer {meta.get('layer')}), not {extractor!r}; build a cache for it with "
            f"`tfmamba features --extractor {extractor} --out NEW_CACHE`"
        )
    if layer is not ... and layer != meta.get("layer"):
        raise DataError(f"feature cache {where} holds layer {meta.get('layer')} of {meta.get('extractor')!r}, not layer {layer}")
    if manifest is not None:
        wanted = manifest_hash_of(manifest)
        if wanted != meta.get("manifest_hash"):
            raise DataError(
                f"feature cache {where} was built from another manifest (hash {meta.get('manifest_hash')}, "
                f"this one is {wanted}); rebuild it with `tfmamba features`"
            )


def read_skipped(fs: pafs.FileSystem, root: str) -> dict[str, str]:
    """The utterances the last build of the cache at `root` skipped, with the reason (problems.csv, written when a
    build ends); {} when there is none."""
    path = f"{root}/{PROBLEMS}"
    if not exists(fs, path):
        return {}
    with fs.open_input_stream(path) as fh:
        rows = csv.DictReader(io.StringIO(fh.read().decode("utf-8", errors="replace")))
        return {row["utt_id"]: row.get("reason") or "" for row in rows if row.get("utt_id")}


def _frames_bytes(column: pa.ChunkedArray) -> Iterable[memoryview]:
    """The raw bytes of a large_binary column, one contiguous span per chunk, without per-row copies."""
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset: chunk.offset + len(chunk) + 1]
        yield memoryview(chunk.buffers()[2])[int(offsets[0]): int(offsets[-1])]


class FeatureStore:
    """A whole feature cache in memory: one contiguous float16 (total_frames, dim) array plus int64 offsets."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray, utt_ids: list[str], metadata: dict,
                 uri: str = "") -> None:
        self.features = features
        self.offsets = offsets
        self.utt_ids = utt_ids
        self.metadata = metadata
        self.uri = uri
        self.index = {u: i for i, u in enumerate(utt_ids)}

    @classmethod
    def open(cls, uri: str, expect_extractor: str | None = None, *, expect_layer: object = ...,
             manifest: object = None) -> "FeatureStore":
        """Load the cache at `uri`; DataError if it holds another extractor (or layer) or was built from another
        manifest (`manifest`: a Manifest or its hash)."""
        fs, root = resolve(uri)
        meta = read_metadata(fs, root)
        if meta is None:
            raise DataError(f"no feature cache at {uri} (missing {METADATA}); build one with `tfmamba features`")
        check_identity(meta, uri, expect_extractor, expect_layer, manifest)
        dim, total = int(meta["dim"]), int(meta["n_frames"])
        features = np.empty((total, dim), dtype=DTYPE)
        flat = features.reshape(-1).view(np.uint8)
        utt_ids: list[str] = []
        lengths: list[np.ndarray] = []
        pos = 0
        for shard in meta["shards"]:
            path = f"{root}/{shard['file']}"
            try:
                table = pq.read_table(path, filesystem=fs, schema=SCHEMA)
            except (OSError, pa.ArrowInvalid) as err:
                raise DataError(f"feature cache shard {path} is unreadable: {err}") from err
            n_frames = table.column("n_frames").to_numpy().astype(np.int64)
            if len(table) != shard["n_utts"] or int(n_frames.sum()) != shard["n_frames"]:
                raise DataError(f"feature cache shard {path} does not match {METADATA}; rebuild the cache")
            for span in _frames_bytes(table.column("frames")):
                flat[pos: pos + len(span)] = np.frombuffer(span, dtype=np.uint8)
                pos += len(span)
            utt_ids.extend(table.column("utt_id").to_pylist())
            lengths.append(n_frames)
        if pos != flat.size:
            raise DataError(f"feature cache {uri} holds {pos} bytes of frames, its metadata says {flat.size}")
        offsets = np.zeros(len(utt_ids) + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        log.info("feature cache %s: %d utterances, %d frames x %d (%.1f MB)", uri, len(utt_ids), total, dim,
                 features.nbytes / 1e6)
        return cls(features, offsets, utt_ids, meta, uri)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Frames per utterance (int64), in `utt_ids` order."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self.index

    def get(self, utt_id: str) -> np.ndarray:
        """The (n_frames, dim) float16 frames of one utterance: a view into the store, not a copy."""
        try:
            i = self.index[utt_id]
        except KeyError:
            raise DataError(f"utterance {utt_id!r} is not in feature cache {self.uri}") from None
        return self.features[self.offsets[i]: self.offsets[i + 1]]

    def skipped_when_built(self) -> dict[str, str]:
        """The utterances the cache's last build skipped, with the reason (its problems.csv); {} when it has none."""
        return read_skipped(*resolve(self.uri)) if self.uri else {}
