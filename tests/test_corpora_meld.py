"""MELD builder with the real label CSVs and a MELD.Raw layout of real and broken AAC clips."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from media import write_mp4

from tfmamba.cli import main
from tfmamba.corpora.folds import load_folds
from tfmamba.corpora.manifest import read_manifest, read_problems
from tfmamba.corpora.meld import LABELS, build_meld, read_meld_labels
from tfmamba.errors import DataError

REAL_CSVS = Path("/work/shared/datasets/meld")
README_COUNTS = {  # from the dataset README: rows and per-emotion counts
    "train": (9989, {"neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109, "sadness": 683, "disgust": 271, "fear": 268}),
    "dev": (1109, {"neutral": 470, "joy": 163, "surprise": 150, "anger": 153, "sadness": 111, "disgust": 22, "fear": 40}),
    "test": (2610, {"neutral": 1256, "joy": 402, "surprise": 281, "anger": 345, "sadness": 208, "disgust": 68, "fear": 50}),
}
TOTAL_ROWS = sum(rows for rows, _ in README_COUNTS.values())

pytestmark = pytest.mark.skipif(not REAL_CSVS.is_dir(), reason="needs the real MELD CSVs in /work/shared/datasets/meld")


def write_clip(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> None:
    """A real AAC-in-mp4 clip (audio only) of a noisy tone."""
    rng = np.random.default_rng(len(path.name))
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.normal(size=t.size)
    write_mp4(path, np.repeat(mono[None, :], channels, axis=0).astype(np.float32), rate)


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory) -> Path:
    """Real CSVs; good clips for 6 rows; the release's known faults reproduced on purpose."""
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    train, dev, test = (root / d for d in ("train_splits", "dev_splits_complete", "output_repeated_splits_test"))
    for folder in (train, dev, test):
        folder.mkdir(parents=True)
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        shutil.copy(REAL_CSVS / name, root / name)
    write_clip(train / "dia0_utt0.mp4", 1.0)
    write_clip(train / "dia0_utt1.mp4", 1.5, rate=44100, channels=2)
    (train / "dia125_utt3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    write_clip(train / "dia9999_utt0.mp4", 1.0)  # a clip with no row
    (train / "notes.txt").write_text("not a clip")
    write_clip(dev / "dia0_utt0.mp4", 2.0, rate=48000)
    write_clip(dev / "dia0_utt1.mp4", 0.8)
    write_clip(test / "dia0_utt0.mp4", 1.2, rate=8000)
    write_clip(test / "dia0_utt1.mp4", 2.5)
    write_clip(test / "dia38_utt4.mp4", 65.0, rate=8000)  # wrongly cut: over the 60 s cap
    (test / "dia220_utt0.mp4").write_bytes(b"")
    return root


def test_real_csv_counts_match_readme():
    labels = read_meld_labels(REAL_CSVS)
    assert len(labels) == TOTAL_ROWS
    for split, (rows, emotions) in README_COUNTS.items():
        part = labels[labels.split == split]
        assert len(part) == rows
        assert part.label.value_counts().to_dict() == emotions
    assert set(labels.label) == set(LABELS)
    first = labels.set_index("utt_id").loc["train_dia0_utt0"]
    assert (first.speaker, first.label, first.sr_no) == ("Chandler", "neutral", 1)
    assert labels.set_index("utt_id").loc["dev_dia110_utt7", "sr_no"] == 1153


def test_unknown_emotion_names_label_and_file(tmp_path):
    for name in ("train_sent_emo.csv", "test_sent_emo.csv"):
        shutil.copy(REAL_CSVS / name, tmp_path / name)
    dev = pd.read_csv(REAL_CSVS / "dev_sent_emo.csv", encoding="utf-8", dtype=str)
    dev.loc[3, "Emotion"] = "boredom"
    dev.to_csv(tmp_path / "dev_sent_emo.csv", index=False, encoding="utf-8")
    with pytest.raises(DataError, match=r"dev_sent_emo.csv: unknown label 'boredom' in row Sr No. 4 \(dia1_utt1\)"):
        read_meld_labels(tmp_path)


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="train_sent_emo.csv not found"):
        read_meld_labels(tmp_path)


def test_build_reports_every_fault(meld_root):
    built = build_meld(meld_root)
    table = built.table.set_index("utt_id")
    assert sorted(table.index) == sorted(
        ["train_dia0_utt0", "train_dia0_utt1", "dev_dia0_utt0", "dev_dia0_utt1", "test_dia0_utt0", "test_dia0_utt1"]
    )
    assert table.loc["test_dia0_utt1", "label"] == "anger"
    assert table.loc["dev_dia0_utt0", "speaker"] == "Phoebe"
    assert table.loc["train_dia0_utt1", "duration"] == pytest.approx(1.5, abs=0.1)
    assert table["split"].value_counts().to_dict() == {"train": 2, "dev": 2, "test": 2}

    reasons = {p.utt_id: p.reason for p in built.problems}
    assert reasons["train_dia125_utt3"].startswith("undecodable")
    assert reasons["test_dia38_utt4"] == "duration 65.0 s over the cap of 60 s"
    assert reasons["test_dia220_utt0"] == "empty file (0 bytes)"
    assert reasons["dev_dia110_utt7"] == "missing clip (row Sr No. 1153 of dev_sent_emo.csv)"
    assert reasons["train_dia9999_utt0"] == "clip has no row in train_sent_emo.csv"
    assert not any("notes.txt" in p.path for p in built.problems)
    kinds = Counter(r.split(" (")[0] for r in reasons.values())
    assert kinds == {
        "missing clip": TOTAL_ROWS - 6 - 3,
        "undecodable": 1,
        "duration 65.0 s over the cap of 60 s": 1,
        "empty file": 1,
        "clip has no row in train_sent_emo.csv": 1,
    }
    assert len(built.problems) == TOTAL_ROWS - 6 + 1


def test_prepare_cli_meld(meld_root, tmp_path, capsys):
    out = tmp_path / "meld"
    assert main(["prepare", "meld", "--root", str(meld_root), "--out", str(out), "--max-duration", "70"]) == 0
    summary = capsys.readouterr().out
    assert "corpus meld: 7 utterances" in summary
    assert "fold 1 (official): train 2, valid 2, test 3" in summary
    manifest = read_manifest(out)
    assert manifest.labels == LABELS and manifest.corpus == "meld"
    assert manifest.label_index("fear") == 6
    (fold,) = load_folds(out)
    assert fold.test == ["test_dia0_utt0", "test_dia0_utt1", "test_dia38_utt4"]
    problems = read_problems(out)
    assert len(problems) == TOTAL_ROWS - 7 + 1
    assert {p.utt_id for p in problems if not p.reason.startswith("missing clip")} == {
        "train_dia125_utt3",
        "test_dia220_utt0",
        "train_dia9999_utt0",
    }


def test_clip_folders_one_level_down_are_found_as_the_csvs_are(meld_root, tmp_path):
    """Each of the release's tarballs unpacked into a folder of its own (train/train_splits/...): the CSVs were
    found there, the clips were not, and every row became a `missing clip` problem."""
    copy = Path(shutil.copytree(meld_root, tmp_path / "MELD.Raw"))
    for split, folder in (("train", "train_splits"), ("dev", "dev_splits_complete"),
                          ("test", "output_repeated_splits_test")):
        (copy / split).mkdir()
        (copy / folder).rename(copy / split / folder)
    assert main(["prepare", "meld", "--root", str(copy), "--out", str(tmp_path / "out"), "--max-duration", "70"]) == 0
    paths = read_manifest(tmp_path / "out").table["path"]
    assert len(paths) == 7 and {Path(p).parent.relative_to(copy).parts[0] for p in paths} == {"train", "dev", "test"}
