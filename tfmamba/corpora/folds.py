"""Cross-validation folds, computed once from the manifest and saved beside it (`folds.json`).

IEMOCAP and the demo corpus use leave-one-session-out (5 folds); MELD uses its official
train/dev/test split as a single fold. Folds are deterministic from the manifest and a
seed, saved as `folds.json` with the manifest hash, so every trial of a sweep sees the
same utterances and folds made for another manifest are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfmamba.corpora.manifest import MANIFEST_NAME, Manifest, manifest_hash, read_manifest_metadata
from tfmamba.errors import DataError
from tfmamba.locations import write_text_atomically

logger = logging.getLogger(__name__)

FOLDS_NAME = "folds.json"
FOLDS_VERSION = 1


@dataclass
class Fold:
    """One fold: 1-based index, a readable name and the utt_ids of each part."""

    index: int
    name: str
    train: list[str]
    valid: list[str]
    test: list[str]


def leave_one_session_out(
    manifest: Manifest,
    valid_fraction: float = 0.1,
    seed: int = 0,
    strategy: str = "speaker",
) -> list[Fold]:
    """One fold per session: that session is the test set, the others train and validate.

    The validation set is always drawn from the training sessions, never the test one.
    Default `strategy="speaker"` holds out whole training speakers (chosen with `seed`,
    added until `valid_fraction` of the training utterances is reached; one of eight
    IEMOCAP speakers is about 12 %). Why: the test set is made of unseen speakers, so a
    validation set of unseen speakers is what makes early stopping and model selection
    estimate test behaviour; a stratified sample of the training speakers' own
    utterances rewards memorising those speakers and picks over-fitted checkpoints.
    `strategy="stratified"` (a per-label random `valid_fraction`) is kept for corpora
    with a single speaker per training set, and is used automatically there.
    """
    if not 0 < valid_fraction < 1:
        raise DataError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    if strategy not in ("speaker", "stratified"):
        raise DataError(f"unknown validation strategy {strategy!r} (speaker or stratified)")
    table = manifest.table
    if "session" not in table.columns:
        raise DataError(f"corpus {manifest.corpus!r}: leave-one-session-out needs a 'session' column")
    sessions = sorted(table["session"].unique().tolist(), key=_session_key)
    if len(sessions) < 2:
        raise DataError(f"corpus {manifest.corpus!r}: leave-one-session-out needs 2+ sessions, got {sessions}")
    folds = []
    for index, session in enumerate(sessions, start=1):
        test_mask = (table["session"] == session).to_numpy()
        rest = table[~test_mask]
        rng = np.random.default_rng([seed, index])
        speakers = sorted(rest["speaker"].astype(str).unique())
        if strategy == "speaker" and len(speakers) >= 2:
            valid_mask = _held_out_speakers(rest, speakers, valid_fraction, rng)
        else:
            if strategy == "speaker":
                logger.info("fold %d: one training speaker only, stratified validation instead", index)
            valid_mask = _stratified(rest, valid_fraction, rng)
        folds.append(
            Fold(
                index=index,
                name=f"session-{session}",
                train=sorted(rest["utt_id"][~valid_mask].astype(str)),
                valid=sorted(rest["utt_id"][valid_mask].astype(str)),
                test=sorted(table["utt_id"][test_mask].astype(str)),
            )
        )
    return folds


def _session_key(value) -> tuple[int, str]:
    return (0, f"{int(value):012d}") if str(value).lstrip("-").isdigit() else (1, str(value))


def _held_out_speakers(rest, speakers: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    counts = rest["speaker"].astype(str).value_counts()
    target = fraction * len(rest)
    chosen: list[str] = []
    for speaker in rng.permutation(speakers):
        if len(chosen) == len(speakers) - 1 or sum(counts[s] for s in chosen) >= target:
            break
        chosen.append(str(speaker))
    return rest["speaker"].astype(str).isin(chosen).to_numpy()


def _stratified(rest, fraction: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(len(rest), dtype=bool)
    labels = rest["label"].astype(str).to_numpy()
    order = np.argsort(rest["utt_id"].astype(str).to_numpy(), kind="stable")
    for label in sorted(set(labels)):
        members = order[labels[order] == label]
        take = int(round(fraction * len(members)))
        if len(members) >= 2:
            take = max(1, min(take, len(members) - 1))
        mask[rng.permutation(members)[:take]] = True
    return mask


def official_split(manifest: Manifest) -> list[Fold]:
    """The corpus's own train/dev/test split (MELD) as a single fold."""
    table = manifest.table
    if "split" not in table.columns:
        raise DataError(f"corpus {manifest.corpus!r}: official split needs a 'split' column")
    parts = {}
    for split in ("train", "dev", "test"):
        parts[split] = sorted(table["utt_id"][table["split"] == split].astype(str))
        if not parts[split]:
            raise DataError(f"corpus {manifest.corpus!r}: the {split!r} split is empty")
    return [Fold(index=1, name="official", train=parts["train"], valid=parts["dev"], test=parts["test"])]


def make_folds(manifest: Manifest, valid_fraction: float = 0.1, seed: int = 0) -> list[Fold]:
    """Official split when the manifest has a `split` column, else leave-one-session-out."""
    if "split" in manifest.table.columns:
        return official_split(manifest)
    if "session" in manifest.table.columns:
        return leave_one_session_out(manifest, valid_fraction=valid_fraction, seed=seed)
    raise DataError(f"corpus {manifest.corpus!r}: no 'split' or 'session' column to make folds from")


def select_folds(folds: list[Fold], indices: Iterable[int]) -> list[Fold]:
    """The folds numbered `indices`, in that order: the one place a fold number becomes a `Fold` (DataError naming
    the numbers that are not there and the ones that are)."""
    by_index = {fold.index: fold for fold in folds}
    wanted = list(indices)
    missing = [index for index in wanted if index not in by_index]
    if missing:
        raise DataError(f"no fold {', '.join(map(str, missing))}: the manifest has folds {sorted(by_index)}")
    return [by_index[index] for index in wanted]


def _folds_file(path: str | Path) -> Path:
    path = Path(path)
    return path / FOLDS_NAME if path.is_dir() or path.suffix != ".json" else path


def save_folds(folds: list[Fold], path: str | Path, manifest: Manifest | str) -> Path:
    """Write folds as JSON (atomically), recording the manifest hash they were made from."""
    target = _folds_file(path)
    digest = manifest if isinstance(manifest, str) else manifest_hash(manifest)
    payload = {
        "format_version": FOLDS_VERSION,
        "manifest_hash": digest,
        "folds": [asdict(fold) for fold in folds],
    }
    write_text_atomically(target, json.dumps(payload, indent=1))
    logger.info("wrote %s (%d folds)", target, len(folds))
    return target


def load_folds(path: str | Path, manifest: Manifest | str | None = None) -> list[Fold]:
    """Read folds; raise `DataError` if they were made for another manifest.

    The manifest to check against is `manifest` (object or hash) or, when omitted, the
    `manifest.parquet` beside the folds file.
    """
    target = _folds_file(path)
    if not target.exists():
        raise DataError(f"{target}: folds file not found (run `tfmamba prepare ...` first)")
    try:
        payload = json.loads(target.read_text(encoding="utf-8"))
        folds = [Fold(**fold) for fold in payload["folds"]]
        recorded = payload["manifest_hash"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{target}: not a folds file ({err})") from err
    if manifest is None and (target.parent / MANIFEST_NAME).exists():
        manifest = read_manifest_metadata(target.parent)["manifest_hash"]
    if manifest is not None:
        expected = manifest if isinstance(manifest, str) else manifest_hash(manifest)
        if expected != recorded:
            raise DataError(
                f"{target}: stale folds, made for manifest {recorded[:12]} but the manifest is "
                f"now {expected[:12]}; rerun `tfmamba prepare` (or make_folds + save_folds)"
            )
    return folds
