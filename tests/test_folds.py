"""Folds: leave-one-session-out, MELD's official split, persistence and stale detection."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tfmamba.corpora.folds import (Fold, leave_one_session_out, load_folds, make_folds, official_split, save_folds,
                                   select_folds)
from tfmamba.corpora.manifest import Manifest, write_manifest
from tfmamba.errors import DataError

LABELS = ["neu", "hap", "ang", "sad"]


def session_manifest(per_speaker: int = 20) -> Manifest:
    rows = []
    for session in range(1, 6):
        for gender in "FM":
            for i in range(per_speaker):
                utt = f"Ses{session:02d}_x_{gender}{i:03d}"
                rows.append(
                    {
                        "utt_id": utt,
                        "path": f"/data/{utt}.wav",
                        "label": LABELS[i % 4],
                        "speaker": f"Ses{session:02d}{gender}",
                        "duration": 1.5,
                        "session": session,
                    }
                )
    return Manifest(pd.DataFrame(rows), "demo", LABELS)


def split_manifest() -> Manifest:
    rows = [
        {"utt_id": f"{split}_{i}", "path": f"/m/{split}_{i}.mp4", "label": "joy", "speaker": "Ross", "duration": 2.0, "split": split}
        for split, n in (("train", 8), ("dev", 3), ("test", 4))
        for i in range(n)
    ]
    return Manifest(pd.DataFrame(rows), "meld", ["joy", "neutral"])


def test_loso_parts_are_disjoint_and_cover_everything():
    manifest = session_manifest()
    folds = leave_one_session_out(manifest)
    assert [f.index for f in folds] == [1, 2, 3, 4, 5]
    session_of = dict(zip(manifest.table.utt_id, manifest.table.session))
    speaker_of = dict(zip(manifest.table.utt_id, manifest.table.speaker))
    for fold in folds:
        train, valid, test = set(fold.train), set(fold.valid), set(fold.test)
        assert not (train & valid or train & test or valid & test)
        assert train | valid | test == set(manifest.table.utt_id)
        assert {session_of[u] for u in test} == {fold.index}
        assert len(test) == 40
        assert fold.index not in {session_of[u] for u in valid}
        assert fold.index not in {session_of[u] for u in train}
        valid_speakers = {speaker_of[u] for u in valid}
        assert len(valid_speakers) == 1
        assert not valid_speakers & {speaker_of[u] for u in train}
        assert len(valid) == 20


def test_loso_is_deterministic_and_seeded():
    manifest = session_manifest()
    first = leave_one_session_out(manifest, seed=3)
    assert first == leave_one_session_out(manifest, seed=3)
    shuffled = Manifest(manifest.table.sample(frac=1.0, random_state=1), "demo", LABELS)
    assert leave_one_session_out(shuffled, seed=3) == first
    others = [leave_one_session_out(manifest, seed=s) for s in range(4)]
    assert any(o[0].valid != first[0].valid for o in others)


def test_stratified_validation_from_training_sessions_only():
    manifest = session_manifest()
    folds = leave_one_session_out(manifest, valid_fraction=0.25, strategy="stratified")
    labels = dict(zip(manifest.table.utt_id, manifest.table.label))
    sessions = dict(zip(manifest.table.utt_id, manifest.table.session))
    for fold in folds:
        assert fold.index not in {sessions[u] for u in fold.valid}
        counts = pd.Series([labels[u] for u in fold.valid]).value_counts()
        assert counts.to_dict() == {label: 10 for label in LABELS}


def test_single_speaker_sessions_fall_back_to_stratified():
    manifest = session_manifest()
    manifest.table["speaker"] = "only"
    folds = leave_one_session_out(manifest)
    sessions = dict(zip(manifest.table.utt_id, manifest.table.session))
    for fold in folds:
        assert {sessions[u] for u in fold.valid} == set(range(1, 6)) - {fold.index}


def test_loso_bad_input():
    manifest = session_manifest()
    with pytest.raises(DataError, match="valid_fraction"):
        leave_one_session_out(manifest, valid_fraction=1.5)
    one = Manifest(manifest.table[manifest.table.session == 1], "demo", LABELS)
    with pytest.raises(DataError, match="2\\+ sessions"):
        leave_one_session_out(one)
    with pytest.raises(DataError, match="session"):
        leave_one_session_out(split_manifest())


def test_official_split_and_dispatch():
    manifest = split_manifest()
    (fold,) = official_split(manifest)
    assert (len(fold.train), len(fold.valid), len(fold.test)) == (8, 3, 4)
    assert fold.valid == sorted(f"dev_{i}" for i in range(3))
    assert make_folds(manifest) == [fold]
    assert len(make_folds(session_manifest())) == 5
    no_dev = Manifest(manifest.table[manifest.table.split != "dev"], "meld", ["joy"])
    with pytest.raises(DataError, match="'dev' split is empty"):
        official_split(no_dev)


def test_save_load_roundtrip_and_stale_hash(tmp_path):
    manifest = write_manifest(session_manifest().table, tmp_path, "demo", LABELS)
    folds = make_folds(manifest)
    path = save_folds(folds, tmp_path, manifest)
    assert path == tmp_path / "folds.json"
    assert json.loads(path.read_text())["manifest_hash"] == manifest.hash
    assert load_folds(tmp_path) == folds
    assert load_folds(path, manifest) == folds

    changed = manifest.table.copy()
    changed.loc[0, "label"] = "sad" if changed.loc[0, "label"] != "sad" else "neu"
    write_manifest(changed, tmp_path, "demo", LABELS)
    with pytest.raises(DataError, match="stale folds"):
        load_folds(tmp_path)
    with pytest.raises(DataError, match="stale folds"):
        load_folds(path, "0" * 64)


def test_load_folds_missing_or_garbage(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_folds(tmp_path / "folds.json")
    (tmp_path / "folds.json").write_text("{not json")
    with pytest.raises(DataError, match="not a folds file"):
        load_folds(tmp_path)


def test_select_folds_turns_numbers_into_folds_and_names_the_missing_ones():
    folds = [Fold(index, f"session-{index}", [], [], []) for index in (1, 2, 3)]
    assert [f.name for f in select_folds(folds, [3, 1])] == ["session-3", "session-1"]
    with pytest.raises(DataError, match=r"no fold 4, 7: the manifest has folds \[1, 2, 3\]"):
        select_folds(folds, [1, 4, 7])
