"""The manifest: one Parquet file listing a corpus's usable utterances.

Columns: `utt_id, path (absolute), label, speaker, duration (s)` plus `session`
(IEMOCAP, demo, any leave-one-session-out corpus) or `split` (train/dev/test, MELD).
Parquet key-value metadata carries `corpus`, `labels` (JSON list: the class order is
the class index) and `manifest_hash`, which the feature cache and the folds record so
that stale derived files are detected. Skipped files go to `problems.csv` instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tfmamba.errors import DataError
from tfmamba.locations import replaced_atomically

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
PROBLEMS_NAME = "problems.csv"
FORMAT_VERSION = "1"
REQUIRED_COLUMNS = ("utt_id", "path", "label", "speaker", "duration")
SPLITS = ("train", "dev", "test")


@dataclass
class Manifest:
    """A validated manifest: the table, the corpus name and the ordered class labels."""

    table: pd.DataFrame
    corpus: str
    labels: list[str]
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def label_index(self, label: str) -> int:
        """Class index of `label` (its position in `labels`)."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise DataError(
                f"unknown label {label!r} for corpus {self.corpus!r} (labels: {self.labels})"
            ) from None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def hash(self) -> str:
        return manifest_hash(self)

    def __len__(self) -> int:
        return len(self.table)


@dataclass(frozen=True)
class Problem:
    """One skipped file or row, for `problems.csv`."""

    utt_id: str
    path: str
    reason: str


LOGGED_PER_REASON = 5  # skips logged one by one for each kind of reason; every one of them is in problems.csv


def reason_kind(reason: str) -> str:
    """A skip reason's kind, for counting: `missing file`, `undecodable`, `too short for fbank`, ..."""
    return reason.split(" (")[0].split(":")[0]


class SkipLog:
    """Logs the first few skips of each kind as they happen; `close()` says how many more are in problems.csv only
    (a corpus moved after `prepare` skips every clip: one line each flooded the console)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.kinds: Counter[str] = Counter()

    def skipped(self, name: str, reason: str) -> None:
        kind = reason_kind(reason)
        self.kinds[kind] += 1
        if self.kinds[kind] <= LOGGED_PER_REASON:
            self.logger.warning("skipped %s: %s", name, reason)

    def close(self) -> None:
        hidden = sum(max(0, n - LOGGED_PER_REASON) for n in self.kinds.values())
        if hidden:
            self.logger.warning("... and %d more skipped (all listed in %s)", hidden, PROBLEMS_NAME)


def manifest_hash(manifest: Manifest | pd.DataFrame, labels: Iterable[str] | None = None) -> str:
    """Stable SHA-256 of the label order and each row's utt_id, label and path (row order ignored)."""
    if isinstance(manifest, Manifest):
        table, labels = manifest.table, manifest.labels
    else:
        table = manifest
    digest = hashlib.sha256()
    digest.update(json.dumps(list(labels or [])).encode())
    rows = sorted(zip(table["utt_id"].astype(str), table["label"].astype(str), table["path"].astype(str)))
    for utt_id, label, path in rows:
        digest.update(f"\n{utt_id}\t{label}\t{path}".encode())
    return digest.hexdigest()


def validate_table(table: pd.DataFrame, labels: list[str], source: str = "manifest") -> None:
    """Raise `DataError` for anything downstream code could not use."""
    if table is None or len(table) == 0:
        raise DataError(f"{source}: empty manifest (no usable utterances)")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source}: missing columns {missing} (need {list(REQUIRED_COLUMNS)})")
    if "session" not in table.columns and "split" not in table.columns:
        raise DataError(f"{source}: needs a 'session' or a 'split' column for the folds")
    if not labels:
        raise DataError(f"{source}: no class labels given")
    if len(set(labels)) != len(labels):
        raise DataError(f"{source}: repeated class labels in {labels}")
    dup = table["utt_id"][table["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{source}: duplicate utt_id {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    unknown = ~table["label"].isin(labels)
    if unknown.any():
        row = table[unknown].iloc[0]
        raise DataError(
            f"{source}: unknown label {row['label']!r} for utterance {row['utt_id']!r} "
            f"({row['path']}); known labels: {labels}"
        )
    relative = [p for p in table["path"].astype(str) if not os.path.isabs(p)]
    if relative:
        raise DataError(f"{source}: paths must be absolute, got {relative[0]!r}")
    duration = pd.to_numeric(table["duration"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(duration) & (duration > 0))
    if bad.any():
        row = table[bad].iloc[0]
        raise DataError(f"{source}: bad duration {row['duration']!r} for utterance {row['utt_id']!r}")
    if "split" in table.columns:
        wrong = sorted(set(table["split"].astype(str)) - set(SPLITS))
        if wrong:
            raise DataError(f"{source}: unknown split values {wrong} (expected {list(SPLITS)})")


def _manifest_file(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir)
    return path / MANIFEST_NAME if path.is_dir() or path.suffix != ".parquet" else path


def write_manifest(
    table: pd.DataFrame,
    path_or_dir: str | Path,
    corpus: str,
    labels: list[str],
    extra_metadata: Mapping[str, str] | None = None,
) -> Manifest:
    """Validate and write the manifest atomically (temp file + rename); returns it read back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = _manifest_file(path_or_dir)
    validate_table(table, labels, str(target))
    table = table.reset_index(drop=True)
    manifest = Manifest(table=table, corpus=corpus, labels=list(labels), path=target)
    metadata = {
        "corpus": corpus,
        "labels": json.dumps(list(labels)),
        "manifest_hash": manifest_hash(manifest),
        "format_version": FORMAT_VERSION,
        **dict(extra_metadata or {}),
    }
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    merged = dict(arrow.schema.metadata or {})
    merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
    arrow = arrow.replace_schema_metadata(merged)
    with replaced_atomically(target) as tmp:
        pq.write_table(arrow, tmp)
    manifest.metadata = metadata
    logger.info("wrote %s (%d utterances)", target, len(table))
    return manifest


def read_manifest_metadata(path_or_dir: str | Path) -> dict[str, str]:
    """The manifest's key-value metadata, read from the footer only (cheap)."""
    import pyarrow.parquet as pq

    target = _manifest_file(path_or_dir)
    if not target.exists():
        raise DataError(f"{target}: manifest not found (run `tfmamba prepare ...` first)")
    try:
        raw = pq.read_schema(target).metadata or {}
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{target}: unreadable manifest ({err})") from err
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"pandas")}


def manifest_rows(path_or_dir: str | Path) -> int:
    """How many utterances the manifest holds, read from the footer only (cheap)."""
    import pyarrow.parquet as pq

    target = _manifest_file(path_or_dir)
    try:
        return pq.read_metadata(target).num_rows
    except Exception as err:  # pyarrow raises several types for a damaged or missing file
        raise DataError(f"{target}: unreadable manifest ({err})") from err


def read_manifest(path_or_dir: str | Path) -> Manifest:
    """Read and validate a manifest (a directory means `DIR/manifest.parquet`)."""
    import pyarrow.parquet as pq

    target = _manifest_file(path_or_dir)
    metadata = read_manifest_metadata(target)
    for key in ("corpus", "labels", "manifest_hash"):
        if key not in metadata:
            raise DataError(f"{target}: not a tfmamba manifest (no {key!r} metadata)")
    try:
        labels = json.loads(metadata["labels"])
    except json.JSONDecodeError as err:
        raise DataError(f"{target}: bad 'labels' metadata ({err})") from err
    table = pq.read_table(target).to_pandas()
    validate_table(table, labels, str(target))
    manifest = Manifest(table=table, corpus=metadata["corpus"], labels=labels, path=target, metadata=metadata)
    if manifest_hash(manifest) != metadata["manifest_hash"]:
        raise DataError(f"{target}: content does not match its recorded hash (edited after writing?)")
    return manifest


def write_problems(problems: Iterable[Problem], path: str | Path) -> Path:
    """Write `utt_id, path, reason` rows (a header alone when nothing was skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROBLEMS_NAME
    with replaced_atomically(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["utt_id", "path", "reason"])
        for problem in problems:
            writer.writerow([problem.utt_id, problem.path, problem.reason])
    return path


def read_problems(path: str | Path) -> list[Problem]:
    """Read a `problems.csv` back."""
    path = Path(path)
    if path.is_dir():
        path = path / PROBLEMS_NAME
    with path.open(newline="", encoding="utf-8") as handle:
        return [Problem(r["utt_id"], r["path"], r["reason"]) for r in csv.DictReader(handle)]
