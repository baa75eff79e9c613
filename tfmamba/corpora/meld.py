"""MELD manifest builder: the three official CSVs and the `dia{D}_utt{U}.mp4` clips.

The CSVs are read as published (UTF-8 with curly quotes, commas inside quoted
utterances, SRT-style time stamps). The real MELD.Raw release has faults: a missing
clip, an undecodable one, minutes-long mis-cut clips and clips with no row. Each is
written to `problems.csv` with its reason; none stops the build.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from tfmamba.audio import audio_info
from tfmamba.corpora.manifest import Problem
from tfmamba.corpora.prepare import BuildResult
from tfmamba.errors import DataError
from tfmamba.progress_bar import progress_bar

logger = logging.getLogger(__name__)

LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
SPLIT_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
CSV_COLUMNS = ("Sr No.", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
CLIP_NAME = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$")
DEFAULT_MAX_DURATION = 60.0


def _find(root: Path, name: str) -> Path | None:
    """`root/name`, else `root/*/name` (the release's tarballs unpack into a folder of their own: train/...)."""
    direct = root / name
    if direct.exists():
        return direct
    found = sorted(p for p in root.glob(f"*/{name}") if not p.name.startswith("."))
    return found[0] if found else None


def _find_csv(root: Path, name: str) -> Path:
    found = _find(root, name)
    if found is None:
        raise DataError(f"{root}: {name} not found (expected in the MELD.Raw folder)")
    return found


def _read_csv(path: Path) -> pd.DataFrame:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            table = pd.read_csv(path, encoding=encoding, dtype={"Speaker": str, "Emotion": str})
        except UnicodeDecodeError:
            logger.warning("%s is not UTF-8, reading it as cp1252", path)
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(f"{path}: unparsable CSV ({err})") from err
        break
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    return table


def read_meld_labels(root: str | Path) -> pd.DataFrame:
    """Parse the three CSVs (no audio): one row per utterance with split, ids, label, speaker."""
    root = Path(root).resolve()
    parts = []
    for split, name in SPLIT_FILES.items():
        path = _find_csv(root, name)
        table = _read_csv(path)
        emotion = table["Emotion"].astype(str).str.strip().str.lower()
        unknown = ~emotion.isin(LABELS)
        if unknown.any():
            row = table[unknown].iloc[0]
            raise DataError(
                f"{path}: unknown label {row['Emotion']!r} in row Sr No. {row['Sr No.']} "
                f"(dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}); known labels: {LABELS}"
            )
        parts.append(
            pd.DataFrame(
                {
                    "utt_id": [f"{split}_dia{d}_utt{u}" for d, u in zip(table["Dialogue_ID"], table["Utterance_ID"])],
                    "split": split,
                    "dialogue_id": table["Dialogue_ID"].astype(int),
                    "utterance_id": table["Utterance_ID"].astype(int),
                    "sr_no": table["Sr No."].astype(int),
                    "label": emotion,
                    "speaker": table["Speaker"].astype(str).str.strip(),
                }
            )
        )
    labels = pd.concat(parts, ignore_index=True)
    dup = labels["utt_id"][labels["utt_id"].duplicated()].tolist()
    if dup:
        raise DataError(f"{root}: the MELD CSVs list {dup[:3]} more than once")
    return labels


def build_meld(root: str | Path, max_duration: float = DEFAULT_MAX_DURATION) -> BuildResult:
    """Match CSV rows to clips; probe each clip's header for decodability and duration."""
    root = Path(root).resolve()
    labels = read_meld_labels(root)
    rows, problems = [], []
    listed: dict[str, set[str]] = {split: set() for split in CLIP_DIRS}
    for split, dialogue, utterance in zip(labels["split"], labels["dialogue_id"], labels["utterance_id"]):
        listed[split].add(f"dia{dialogue}_utt{utterance}.mp4")
    clip_dirs = {split: _find(root, folder) or root / folder for split, folder in CLIP_DIRS.items()}
    for split, clip_dir in clip_dirs.items():
        if not clip_dir.is_dir():
            logger.warning("%s: clip folder missing, every %s row will be a problem", clip_dir, split)
            continue
        for clip in sorted(clip_dir.glob("*.mp4")):
            if clip.name not in listed[split] and not clip.name.startswith("."):
                match = CLIP_NAME.match(clip.name)
                utt_id = f"{split}_dia{match.group(1)}_utt{match.group(2)}" if match else ""
                problems.append(Problem(utt_id, str(clip), f"clip has no row in {SPLIT_FILES[split]}"))
    for row in progress_bar(labels.itertuples(index=False), total=len(labels), desc="meld", unit="clip"):
        path = clip_dirs[row.split] / f"dia{row.dialogue_id}_utt{row.utterance_id}.mp4"
        try:
            info = audio_info(path)
        except DataError as err:
            reason = str(err).removeprefix(f"{path}: ")
            if reason == "missing file":
                reason = f"missing clip (row Sr No. {row.sr_no} of {SPLIT_FILES[row.split]})"
            problems.append(Problem(row.utt_id, str(path), reason))
            continue
        if info.duration_s > max_duration:
            problems.append(
                Problem(row.utt_id, str(path), f"duration {info.duration_s:.1f} s over the cap of {max_duration:g} s")
            )
            continue
        rows.append(
            {
                "utt_id": row.utt_id,
                "path": str(path),
                "label": row.label,
                "speaker": row.speaker,
                "duration": info.duration_s,
                "split": row.split,
            }
        )
    return BuildResult(pd.DataFrame(rows), LABELS, problems, {})
