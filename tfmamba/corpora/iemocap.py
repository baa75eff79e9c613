"""IEMOCAP manifest builder: the standard 4 classes, exc merged into hap.

Reads `SessionN/dialog/EmoEvaluation/*.txt` (one `[start - end]\\tutt_id\\tlabel\\t[v, a, d]`
line per utterance) and the audio at `SessionN/sentences/wav/<dialog>/<utt_id>.wav`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from tfmamba.audio import audio_info
from tfmamba.corpora.manifest import Problem
from tfmamba.corpora.prepare import BuildResult
from tfmamba.errors import DataError
from tfmamba.progress_bar import progress_bar

logger = logging.getLogger(__name__)

LABELS = ["neu", "hap", "ang", "sad"]
LABEL_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
EXPECTED_UTTERANCES = 5531
LINE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(Ses\d\d[FM]_\S+)\t(\w+)\t")
UTT_ID = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")


def speaker_of(utt_id: str) -> str:
    """Session plus the gender letter of the id's last part: Ses01F_impro01_M000 -> Ses01M."""
    match = UTT_ID.match(utt_id)
    if not match:
        raise DataError(f"unexpected IEMOCAP utterance id {utt_id!r}")
    return f"Ses{match.group(1)}{match.group(2)}"


EVALUATIONS = "Session[1-5]/dialog/EmoEvaluation/*.txt"


def release_root(root: str | Path) -> Path:
    """The folder holding Session1..5: `root` itself, or the one folder under it that does (the tarball unpacks
    into IEMOCAP_full_release/, so --root often names its parent)."""
    root = Path(root)
    if any(root.glob(EVALUATIONS)):
        return root
    below = sorted({p.parents[3] for p in root.glob(f"*/{EVALUATIONS}")})
    if len(below) == 1:
        logger.info("reading IEMOCAP from %s", below[0])
        return below[0]
    if below:
        raise DataError(f"{root}: {len(below)} folders under it hold an IEMOCAP release "
                        f"({', '.join(p.name for p in below)}); give one of them as --root")
    raise DataError(f"{root}: no Session*/dialog/EmoEvaluation/*.txt files (is this IEMOCAP_full_release?)")


def read_evaluations(root: str | Path) -> pd.DataFrame:
    """All labelled utterances in the EmoEvaluation files: utt_id, session, raw label."""
    root = release_root(root)
    files = sorted(root.glob(EVALUATIONS))
    files = [f for f in files if not f.name.startswith(".")]
    if not files:
        raise DataError(f"{root}: no Session*/dialog/EmoEvaluation/*.txt files (is this IEMOCAP_full_release?)")
    rows = []
    for file in files:
        session = int(file.parts[-4].removeprefix("Session"))
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            match = LINE.match(line)
            if match:
                rows.append({"utt_id": match.group(3), "session": session, "raw_label": match.group(4)})
    return pd.DataFrame(rows, columns=["utt_id", "session", "raw_label"]).drop_duplicates("utt_id")


def build_iemocap(root: str | Path, max_duration: float | None = None) -> BuildResult:
    """Map labels to the 4 classes, find each wav and read its duration from the header."""
    root = release_root(Path(root).resolve())
    evaluations = read_evaluations(root)
    keep = evaluations["raw_label"].isin(LABEL_MAP)
    dropped = dict(Counter(evaluations.loc[~keep, "raw_label"]))
    kept = evaluations[keep]
    sessions = sorted(evaluations["session"].unique())
    if sessions == [1, 2, 3, 4, 5] and len(kept) != EXPECTED_UTTERANCES:
        logger.warning("found %d 4-class utterances, the full release has %d", len(kept), EXPECTED_UTTERANCES)
    rows, problems = [], []
    for utt_id, session, raw in progress_bar(kept.itertuples(index=False), total=len(kept), desc="iemocap", unit="utt"):
        dialog = utt_id.rsplit("_", 1)[0]
        path = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt_id}.wav"
        try:
            info = audio_info(path)
        except DataError as err:
            problems.append(Problem(utt_id, str(path), str(err).removeprefix(f"{path}: ")))
            continue
        if max_duration is not None and info.duration_s > max_duration:
            problems.append(Problem(utt_id, str(path), f"duration {info.duration_s:.1f} s over the cap of {max_duration:g} s"))
            continue
        rows.append(
            {
                "utt_id": utt_id,
                "path": str(path),
                "label": LABEL_MAP[raw],
                "speaker": speaker_of(utt_id),
                "duration": info.duration_s,
                "session": int(session),
            }
        )
    return BuildResult(pd.DataFrame(rows), LABELS, problems, dropped)
