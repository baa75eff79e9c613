"""Writes utterance features into a feature cache (see `tfmamba.features.store` for the layout).

Shards and metadata are written under a `.tmp-` name and renamed into place, so a killed run
leaves complete shards plus, at worst, a temporary file that the next run deletes. Opening an
existing cache resumes it: its utterances are `done`, and a different extractor, layer or
manifest is refused rather than mixed in. One writer at a time: a second process opening the cache
while a first writes it stops, naming the first (`tfmamba.process_lock`), instead of deleting its
temporary shards and reusing its shard names.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tfmamba import __version__
from tfmamba.errors import DataError, StorageError, write_failure
from tfmamba.features.store import (CACHE_IDENTITY, DTYPE, FORMAT_VERSION, METADATA, PROBLEMS, SCHEMA, TMP_PREFIX,
                                    exists, read_metadata, resolve)
from tfmamba.process_lock import LocationBusy, acquire

log = logging.getLogger(__name__)
WRITER_LOCK = "writer"  # the lock a cache's writer holds (`tfmamba.process_lock`)


class FeatureWriter:
    """Appends utterances to a cache in shards of `shard_size`; call `close()` (or use `with`) to write the last one."""

    def __init__(self, uri: str, identity: dict, manifest_hash: str, shard_size: int = 256) -> None:
        if shard_size < 1:
            raise DataError(f"shard size must be at least 1, got {shard_size}")
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.shard_size = shard_size
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as err:
            raise StorageError(f"{uri}: cannot make the feature cache's folder ({write_failure(err)})") from err
        try:
            self._lock = acquire(uri, WRITER_LOCK)
        except LocationBusy as err:
            raise DataError(f"feature cache {uri} is being written by another process ({err}): wait for it to end, "
                            f"or stop it; then the same command goes on where it stopped") from None
        try:
            self._open(identity, manifest_hash)
        except BaseException:
            self.release()
            raise
        self._pending: list[tuple[str, np.ndarray]] = []
        self.written = 0
        self.bytes_written = 0

    def _open(self, identity: dict, manifest_hash: str) -> None:
        """Clear a killed run's temporary files, check the cache was built the same way, read what is done."""
        self._clean_tmp()
        wanted = {**{k: identity.get(k) for k in CACHE_IDENTITY}, "manifest_hash": manifest_hash}
        meta = read_metadata(self.fs, self.root)
        if meta is None:
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            meta = {"format_version": FORMAT_VERSION, **wanted, "dtype": np.dtype(DTYPE).name, "shards": [],
                    "n_utts": 0, "n_frames": 0, "bytes": 0, "created": now, "updated": now,
                    "tfmamba_version": __version__}
        else:
            diff = {k: (meta.get(k), wanted[k]) for k in CACHE_IDENTITY if meta.get(k) != wanted[k]}
            if diff:
                what = "; ".join(f"{k}: cache has {old!r}, this run {new!r}" for k, (old, new) in diff.items())
                raise DataError(f"feature cache {self.uri} was built differently ({what}); use another --out "
                                f"or delete the cache")
        self.meta = meta
        self.done: set[str] = self._read_done()

    def release(self) -> None:
        """Let another process write the cache (`close()` does it after the last shard)."""
        self._lock.release()

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:  # never written, or the filesystem refuses even that: the next run's `_clean_tmp` tries again
            pass

    def _clean_tmp(self) -> None:
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if info.base_name.startswith(TMP_PREFIX):
                log.warning("removing %s left by an interrupted run", info.path)
                self.fs.delete_file(info.path)

    def _read_done(self) -> set[str]:
        """Utterances already in the cache, adopting complete shards that a killed run renamed but never listed."""
        listed = {s["file"] for s in self.meta["shards"]}
        done: set[str] = set()
        for shard in self.meta["shards"]:
            path = f"{self.root}/{shard['file']}"
            try:
                done.update(pq.read_table(path, filesystem=self.fs, columns=["utt_id"]).column("utt_id").to_pylist())
            except (OSError, pa.ArrowInvalid) as err:
                raise DataError(f"feature cache shard {path} is listed but unreadable ({err}); delete the cache") from err
        orphans = sorted(i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root))
                         if i.base_name.startswith("shard-") and i.base_name.endswith(".parquet")
                         and i.base_name not in listed)
        for name in orphans:
            table = pq.read_table(f"{self.root}/{name}", filesystem=self.fs, columns=["utt_id", "n_frames"])
            log.info("adopting shard %s written by an interrupted run", name)
            self._record(name, table.column("utt_id").to_pylist(), int(table.column("n_frames").to_numpy().sum()),
                         self.fs.get_file_info(f"{self.root}/{name}").size)
            done.update(table.column("utt_id").to_pylist())
        if orphans:
            self._write_metadata()
        return done

    def add(self, utt_id: str, frames: np.ndarray) -> None:
        """Queue one utterance; DataError (nothing written) for a wrong shape, no frames, or NaN/Inf in float16."""
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.meta["dim"] or frames.shape[0] == 0:
            raise DataError(f"{utt_id}: features of shape {frames.shape}, expected (frames > 0, {self.meta['dim']})")
        with np.errstate(over="ignore", invalid="ignore"):
            half = np.ascontiguousarray(frames, dtype=DTYPE)
        if not np.isfinite(half).all():
            where = "NaN/Inf in the features" if not np.isfinite(frames).all() else "values beyond the float16 range"
            raise DataError(f"{utt_id}: {where}; not written")
        if utt_id in self.done:
            return
        self._pending.append((utt_id, half))
        self.done.add(utt_id)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued utterances as one shard (tmp file, then rename) and update the metadata."""
        if not self._pending:
            return
        ids = [u for u, _ in self._pending]
        n_frames = [f.shape[0] for _, f in self._pending]
        table = pa.table([pa.array(ids, pa.string()), pa.array(n_frames, pa.int32()),
                          pa.array([f.tobytes() for _, f in self._pending], pa.large_binary())], schema=SCHEMA)
        name = self._next_name()
        tmp = f"{self.root}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            pq.write_table(table, tmp, filesystem=self.fs, use_dictionary=False, row_group_size=len(ids),
                           compression={"utt_id": "zstd", "n_frames": "zstd", "frames": "none"})
            self.fs.move(tmp, f"{self.root}/{name}")
            size = self.fs.get_file_info(f"{self.root}/{name}").size
            self._record(name, ids, int(sum(n_frames)), size)
            self._write_metadata()  # if only this fails, the next run adopts the shard
        except OSError as err:
            self._pending = []  # not retried by close(): a rerun extracts what is not in the cache
            self._delete_quietly(tmp)
            raise StorageError(f"{self.root}: cannot write the feature shard {name} ({write_failure(err)}); the "
                               f"{self.meta['n_utts']} utterances already in the cache are kept, and a rerun of the "
                               "same command goes on after them") from err
        self.written += len(ids)
        self.bytes_written += size
        self._pending = []
        log.debug("wrote %s: %d utterances, %.1f MB", name, len(ids), size / 1e6)

    def close(self) -> None:
        """Write the last shard; the metadata is written even for an empty cache."""
        self.flush()
        if not exists(self.fs, f"{self.root}/{METADATA}"):
            self._write_metadata()
        self.release()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_problems(self, rows: list[dict]) -> str:
        """Write `problems.csv` (utt_id, path, reason) beside the cache, replacing the last run's; returns its URI."""
        import csv

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["utt_id", "path", "reason"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        self._atomic_write(PROBLEMS, buf.getvalue().encode())
        return f"{self.uri.rstrip('/')}/{PROBLEMS}"

    def _next_name(self) -> str:
        used = [int(s["file"][6:11]) for s in self.meta["shards"]]
        return f"shard-{max(used, default=-1) + 1:05d}.parquet"

    def _record(self, name: str, ids: list[str], n_frames: int, size: int) -> None:
        self.meta["shards"].append({"file": name, "n_utts": len(ids), "n_frames": n_frames, "bytes": size})
        self.meta["n_utts"] += len(ids)
        self.meta["n_frames"] += n_frames
        self.meta["bytes"] += size

    def _write_metadata(self) -> None:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._atomic_write(METADATA, json.dumps(self.meta, indent=1).encode())

    def _atomic_write(self, name: str, data: bytes) -> None:
        tmp = f"{self.root}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(data)
        self.fs.move(tmp, f"{self.root}/{name}")

