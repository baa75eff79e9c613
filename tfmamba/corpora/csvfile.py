"""Manifest builder for any other corpus, from a CSV with `path, label` columns.

Optional columns: `utt_id` (default: the file name without extension), `speaker`
(default: `session` if present, else "unknown"), `session` or `split` (one is needed for
the folds). Relative paths are resolved against the CSV's folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tfmamba.audio import audio_info
from tfmamba.corpora.manifest import Problem
from tfmamba.corpora.prepare import BuildResult
from tfmamba.errors import DataError

logger = logging.getLogger(__name__)


def read_label_csv(csv_path: str | Path, labels: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Parse and check the CSV (no audio access); returns the rows and the class order."""
    csv_path = Path(csv_path).resolve()
    if not csv_path.exists():
        raise DataError(f"{csv_path}: CSV not found")
    try:
        table = pd.read_csv(csv_path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: unreadable CSV ({err})") from err
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing columns {missing} (need path, label)")
    if len(table) == 0:
        raise DataError(f"{csv_path}: empty CSV, no utterances")
    if "session" not in table.columns and "split" not in table.columns:
        raise DataError(f"{csv_path}: needs a 'session' or a 'split' column to make folds")
    table["label"] = table["label"].str.strip()
    if labels:
        unknown = ~table["label"].isin(labels)
        if unknown.any():
            row = table[unknown].iloc[0]
            raise DataError(
                f"{csv_path}: unknown label {row['label']!r} for {row['path']!r} (line {row.name + 2}); "
                f"--labels allows {labels}"
            )
    else:
        labels = sorted(table["label"].unique())
    base = csv_path.parent
    table["path"] = [str((base / p.strip()).resolve()) for p in table["path"]]
    if "utt_id" not in table.columns:
        table["utt_id"] = [Path(p).stem for p in table["path"]]
    if "speaker" not in table.columns:
        table["speaker"] = table["session"] if "session" in table.columns else "unknown"
    if "session" in table.columns:
        table["session"] = [int(s) if s.strip().lstrip("-").isdigit() else s.strip() for s in table["session"]]
        if len({type(s) for s in table["session"]}) > 1:
            table["session"] = table["session"].astype(str)
    dup = table["utt_id"][table["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise DataError(f"{csv_path}: duplicate utt_id {dup[:5]} (add a unique utt_id column)")
    return table, list(labels)


def build_from_csv(csv_path: str | Path, labels: list[str] | None = None, max_duration: float | None = None) -> BuildResult:
    """Read durations from the audio headers; unreadable files become problems."""
    table, labels = read_label_csv(csv_path, labels)
    keep = ["utt_id", "path", "label", "speaker"] + [c for c in ("session", "split") if c in table.columns]
    rows, problems = [], []
    for record in tqdm(table[keep].to_dict("records"), desc="csv", unit="utt"):
        try:
            info = audio_info(record["path"])
        except DataError as err:
            problems.append(Problem(record["utt_id"], record["path"], str(err).removeprefix(f"{record['path']}: ")))
            continue
        if max_duration is not None and info.duration_s > max_duration:
            problems.append(
                Problem(record["utt_id"], record["path"], f"duration {info.duration_s:.1f} s over the cap of {max_duration:g} s")
            )
            continue
        rows.append({**record, "duration": info.duration_s})
    return BuildResult(pd.DataFrame(rows), labels, problems, {})
