"""IEMOCAP builder on a tiny fake IEMOCAP_full_release tree (real EmoEvaluation line format)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.folds import load_folds
from tfmamba.corpora.iemocap import build_iemocap, read_evaluations, speaker_of
from tfmamba.corpora.manifest import read_manifest, read_problems
from tfmamba.errors import DataError

# (utt_id, raw label, wav state); two sessions, improvised and scripted dialogs, both genders
UTTERANCES = {
    1: [
        ("Ses01F_impro01_F000", "neu", "ok"),
        ("Ses01F_impro01_M000", "exc", "ok"),
        ("Ses01F_impro01_F001", "fru", "ok"),
        ("Ses01F_impro01_M001", "ang", "ok"),
        ("Ses01M_script01_1_F000", "sad", "ok"),
        ("Ses01M_script01_1_M000", "hap", "ok"),
        ("Ses01M_script01_1_M001", "xxx", "ok"),
        ("Ses01M_script01_1_F001", "neu", "missing"),
    ],
    2: [
        ("Ses02F_impro02_F000", "hap", "ok"),
        ("Ses02F_impro02_M000", "sad", "ok"),
        ("Ses02F_impro02_F001", "ang", "corrupt"),
        ("Ses02F_impro02_M001", "neu", "ok"),
        ("Ses02M_impro03_F000", "exc", "ok"),
        ("Ses02M_impro03_M000", "sur", "ok"),
    ],
}


def make_iemocap(root):
    rng = np.random.default_rng(0)
    for session, utterances in UTTERANCES.items():
        dialogs = {}
        for utt_id, label, state in utterances:
            dialogs.setdefault(utt_id.rsplit("_", 1)[0], []).append((utt_id, label, state))
        for dialog, items in dialogs.items():
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for i, (utt_id, label, state) in enumerate(items):
                start = 2.5 * i + 0.2901
                lines += [
                    f"[{start:.4f} - {start + 1.9456:.4f}]\t{utt_id}\t{label}\t[2.5000, 2.5000, 2.5000]",
                    "C-E1:\tNeutral state;\t()",
                    "A-E3:\tval 3; act 2; dom  2;\t()",
                    "",
                ]
                wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt_id}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                if state == "ok":
                    soundfile.write(wav, rng.normal(0, 0.1, 16000 + 800 * i).astype(np.float32), 16000, subtype="PCM_16")
                elif state == "corrupt":
                    wav.write_bytes(b"RIFF" + bytes(range(256)) * 4)
            evaluation = root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            evaluation.parent.mkdir(parents=True, exist_ok=True)
            evaluation.write_text("\n".join(lines))
    (root / "Session1" / "dialog" / "EmoEvaluation" / "Categorical").mkdir()
    return root


@pytest.fixture
def iemocap_root(tmp_path):
    return make_iemocap(tmp_path / "IEMOCAP_full_release")


def test_speaker_rule():
    assert speaker_of("Ses01F_impro01_F000") == "Ses01F"
    assert speaker_of("Ses01F_impro01_M013") == "Ses01M"
    assert speaker_of("Ses05M_script02_2_F014") == "Ses05F"
    with pytest.raises(DataError, match="unexpected IEMOCAP utterance id"):
        speaker_of("dia1_utt2")


def test_read_evaluations_parses_only_turn_lines(iemocap_root):
    table = read_evaluations(iemocap_root)
    assert len(table) == 14
    assert table.set_index("utt_id").loc["Ses01F_impro01_M000", "raw_label"] == "exc"
    with pytest.raises(DataError, match="no Session"):
        read_evaluations(iemocap_root / "Session1")


def test_build_maps_labels_and_reports_bad_wavs(iemocap_root):
    built = build_iemocap(iemocap_root)
    table = built.table.set_index("utt_id")
    assert built.labels == ["neu", "hap", "ang", "sad"]
    assert built.dropped == {"fru": 1, "xxx": 1, "sur": 1}
    assert table.loc["Ses01F_impro01_M000", "label"] == "hap"
    assert table.loc["Ses02M_impro03_F000", "label"] == "hap"
    assert table["label"].value_counts().to_dict() == {"hap": 4, "sad": 2, "neu": 2, "ang": 1}
    assert table.loc["Ses01M_script01_1_F000", "speaker"] == "Ses01F"
    assert table.loc["Ses02F_impro02_M000", "speaker"] == "Ses02M"
    assert table.loc["Ses02F_impro02_M000", "session"] == 2
    assert table.loc["Ses01F_impro01_M000", "duration"] == pytest.approx(1.05)
    problems = {p.utt_id: p.reason for p in built.problems}
    assert problems["Ses01M_script01_1_F001"] == "missing file"
    assert problems["Ses02F_impro02_F001"].startswith("undecodable")
    assert len(problems) == 2


def test_prepare_cli_writes_outputs_and_is_idempotent(iemocap_root, tmp_path, capsys, caplog):
    out = tmp_path / "manifests" / "iemocap"
    assert main(["prepare", "iemocap", "--root", str(iemocap_root), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "corpus iemocap: 9 utterances" in summary
    assert "dropped labels (not in the class set): fru 1, sur 1, xxx 1" in summary
    assert "skipped files: 2 (listed in problems.csv)" in summary
    assert str(out / "problems.csv") in summary
    manifest = read_manifest(out)
    assert manifest.corpus == "iemocap" and len(manifest) == 9
    assert all(p.startswith(str(iemocap_root)) for p in manifest.table.path)
    folds = load_folds(out)
    assert [f.name for f in folds] == ["session-1", "session-2"]
    assert {p.utt_id for p in read_problems(out)} == {"Ses01M_script01_1_F001", "Ses02F_impro02_F001"}

    mtime = (out / "manifest.parquet").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(["prepare", "iemocap", "--root", str(iemocap_root), "--out", str(out)]) == 0
    assert "same options, skipping" in caplog.text
    assert "reused outputs" in capsys.readouterr().out
    assert (out / "manifest.parquet").stat().st_mtime_ns == mtime

    caplog.clear()
    with caplog.at_level(logging.INFO):
        main(["prepare", "iemocap", "--root", str(iemocap_root), "--out", str(out), "--max-duration", "1.1"])
    assert "options changed since the previous run (max_duration)" in caplog.text
    assert len(read_manifest(out)) < 9
    assert any("over the cap of 1.1 s" in p.reason for p in read_problems(out))


def test_prepare_rebuilds_when_an_output_is_missing(iemocap_root, tmp_path, caplog):
    out = tmp_path / "out"
    main(["prepare", "iemocap", "--root", str(iemocap_root), "--out", str(out)])
    (out / "folds.json").unlink()
    with caplog.at_level(logging.INFO):
        main(["prepare", "iemocap", "--root", str(iemocap_root), "--out", str(out)])
    assert "missing folds.json" in caplog.text
    assert (out / "folds.json").exists()


def test_prepare_missing_root_is_a_clean_error(tmp_path, capsys):
    assert main(["prepare", "iemocap", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no Session*/dialog/EmoEvaluation" in capsys.readouterr().err


def test_full_release_count_is_checked(tmp_path, caplog):
    root = tmp_path / "IEMOCAP_full_release"
    for session in range(1, 6):
        evaluation = root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"Ses0{session}F_impro01.txt"
        evaluation.parent.mkdir(parents=True)
        evaluation.write_text(f"[1.0000 - 2.0000]\tSes0{session}F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    with caplog.at_level(logging.WARNING):
        built = build_iemocap(root)
    assert "found 5 4-class utterances, the full release has 5531" in caplog.text
    assert len(built.table) == 0 and [p.reason for p in built.problems] == ["missing file"] * 5


def test_a_root_one_folder_above_the_release_is_read_from_the_release(iemocap_root, tmp_path, capsys):
    """The tarball unpacks into IEMOCAP_full_release/, and `--root` naming its parent said only "no
    Session*/dialog/EmoEvaluation/*.txt files"; it now reads the one release under it, and names them if several."""
    parent = iemocap_root.parent
    assert main(["prepare", "iemocap", "--root", str(parent), "--out", str(tmp_path / "o")]) == 0
    paths = read_manifest(tmp_path / "o").table["path"]
    assert len(paths) and all(p.startswith(f"{iemocap_root}/Session") for p in paths)
    make_iemocap(parent / "IEMOCAP_copy")
    assert main(["prepare", "iemocap", "--root", str(parent), "--out", str(tmp_path / "o2")]) == 2
    assert (f"{parent}: 2 folders under it hold an IEMOCAP release (IEMOCAP_copy, IEMOCAP_full_release); give one "
            "of them as --root") in capsys.readouterr().err
