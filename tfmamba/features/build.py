"""Fill a feature cache from a manifest: load audio, extract in length-sorted batches, write shards.

Utterances already in the cache are skipped (resume). Audio that fails to load, clips too short
for the extractor, and features with NaN/Inf are skipped and listed in `problems.csv` beside the
cache; nothing is half-written.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from tfmamba.corpora.manifest import SkipLog, reason_kind
from tfmamba.errors import DataError
from tfmamba.features.extractor import Extractor
from tfmamba.features.writer import FeatureWriter
from tfmamba.progress_bar import progress_bar

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What one `build_cache` run did, for the printed summary and the benchmark."""

    uri: str
    written: int = 0
    already_done: int = 0
    windowed: int = 0
    bytes_written: int = 0
    cache_bytes: int = 0
    cache_utts: int = 0
    seconds: float = 0.0
    problems: list[dict] = field(default_factory=list)
    problems_uri: str | None = None

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def skip_kinds(self) -> Counter[str]:
        """Skipped utterances by the kind of their reason (`missing file`, `undecodable`, ...), most first."""
        return Counter(reason_kind(problem["reason"]) for problem in self.problems)

    @property
    def utts_per_s(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lines = [
            f"feature cache: {self.uri}",
            f"  utterances: {self.written} written, {self.skipped} skipped, {self.already_done} already done "
            f"({self.cache_utts} in the cache)",
            f"  size on disk: {self.cache_bytes / 1e6:.1f} MB",
            f"  write speed: {self.utts_per_s:.1f} utt/s, {self.mb_per_s:.2f} MB/s ({self.seconds:.1f} s)",
        ]
        if self.windowed:
            lines.append(f"  long clips processed in windows: {self.windowed}")
        if self.skipped:
            lines.append("  skipped: " + ", ".join(f"{n} {kind}" for kind, n in self.skip_kinds().most_common()))
        lines.append(f"  problems: {self.problems_uri} ({self.skipped} rows)")
        return "\n".join(lines)


def build_cache(table: pd.DataFrame, manifest_hash: str, extractor: Extractor, out: str, *,
                batch_size: int = 8, shard_size: int = 256, hard_cap_seconds: float | None = 600.0,
                progress: bool = True) -> BuildReport:
    """Extract features for every row of `table` (columns utt_id, path[, duration]) into the cache at `out`."""
    from tfmamba.audio import load_audio

    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    dup = table["utt_id"][table["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"duplicate utt_id in the manifest: {dup[:5]}")
    writer = FeatureWriter(out, extractor.describe(), manifest_hash, shard_size=shard_size)
    report = BuildReport(uri=out)
    todo = table[~table["utt_id"].astype(str).isin(writer.done)]
    report.already_done = len(table) - len(todo)
    if "duration" in todo.columns:
        todo = todo.sort_values("duration", kind="stable")
    rows = list(zip(todo["utt_id"].astype(str), todo["path"].astype(str)))
    windowed_before = extractor.windowed
    start = time.perf_counter()
    bar = _progress(len(rows), progress)

    skips = SkipLog(log)

    def skip(utt_id: str, path: str, reason: str) -> None:
        reason = reason.removeprefix(f"{path}: ").removeprefix(f"{utt_id}: ")  # both have columns of their own
        skips.skipped(f"{utt_id} ({path})", reason)
        report.problems.append({"utt_id": utt_id, "path": path, "reason": reason})

    with writer:
        for i in range(0, len(rows), batch_size):
            loaded = []
            for utt_id, path in rows[i: i + batch_size]:
                try:
                    wave = load_audio(path, extractor.sample_rate, max_seconds=hard_cap_seconds)
                except DataError as err:
                    skip(utt_id, path, str(err))
                    continue
                if len(wave) < extractor.min_samples:
                    skip(utt_id, path, f"too short for {extractor.name}: {len(wave)} samples < {extractor.min_samples}")
                    continue
                loaded.append((utt_id, path, wave))
            outs = extractor([w for _, _, w in loaded]) if loaded else []
            for (utt_id, path, _), frames in zip(loaded, outs):
                try:
                    writer.add(utt_id, frames)
                except DataError as err:
                    skip(utt_id, path, str(err))
            bar.update(min(batch_size, len(rows) - i))
    bar.close()
    skips.close()
    report.seconds = time.perf_counter() - start
    report.written = writer.written
    report.bytes_written = writer.bytes_written
    report.cache_bytes = int(writer.meta["bytes"])
    report.cache_utts = int(writer.meta["n_utts"])
    report.windowed = extractor.windowed - windowed_before
    report.problems_uri = writer.write_problems(report.problems)
    return report


def _progress(total: int, enabled: bool):
    return progress_bar(total=total, unit="utt", desc="features", disable=not enabled or total == 0)
