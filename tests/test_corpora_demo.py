"""The synthetic demo corpus: format, determinism, and emotion cues that overlap."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.demo import EMOTIONS, LABELS, clip_plan, generate_demo, make_speaker, synthesize
from tfmamba.corpora.folds import load_folds
from tfmamba.corpora.manifest import read_manifest, read_problems


def rms_db(wave: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(wave**2)) + 1e-12))


def test_generate_small_corpus(tmp_path):
    built = generate_demo(tmp_path, seed=7, clips_per_speaker=4)
    table = built.table
    assert built.labels == LABELS == ["neu", "hap", "ang", "sad"]
    assert len(table) == 40
    assert sorted(table.speaker.unique()) == [f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM"]
    assert table.groupby("speaker").label.apply(sorted).map(tuple).unique().tolist() == [("ang", "hap", "neu", "sad")]
    assert set(table.session) == {1, 2, 3, 4, 5}
    assert table.duration.between(1.0, 3.0).all()
    for row in table.itertuples():
        wave, rate = soundfile.read(row.path, dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert len(wave) / rate == pytest.approx(row.duration)
        assert 0.005 < np.abs(wave).max() <= 0.99
        assert row.utt_id.startswith(f"Ses{row.session:02d}_demo_{row.speaker[-1]}")


def test_deterministic_from_seed(tmp_path):
    first = generate_demo(tmp_path / "a", seed=3, clips_per_speaker=4).table
    second = generate_demo(tmp_path / "b", seed=3, clips_per_speaker=4).table
    other = generate_demo(tmp_path / "c", seed=4, clips_per_speaker=4).table
    assert first.drop(columns="path").equals(second.drop(columns="path"))
    for a, b in zip(first.path, second.path):
        assert np.array_equal(soundfile.read(a)[0], soundfile.read(b)[0])
    assert not np.array_equal(soundfile.read(first.path[0])[0][:100], soundfile.read(other.path[0])[0][:100])


def test_clip_plan_shares():
    plan = clip_plan(80, np.random.default_rng(0))
    assert {label: plan.count(label) for label in LABELS} == {"neu": 24, "hap": 20, "ang": 18, "sad": 18}


def test_emotion_cues_are_present_but_overlap():
    speaker = make_speaker(0, 1, "F")
    energy = {
        emotion: [rms_db(synthesize(speaker, emotion, np.random.default_rng([11, i, k]))) for i in range(16)]
        for k, emotion in enumerate(LABELS)
    }
    means = {emotion: np.mean(values) for emotion, values in energy.items()}
    assert means["ang"] > means["hap"] > means["neu"] > means["sad"]
    assert means["ang"] - means["sad"] > 4
    assert max(energy["sad"]) > min(energy["neu"])
    assert max(energy["neu"]) > min(energy["ang"])


def test_speaker_pitch_ranges_overlap_across_emotions():
    semitone = 2 ** (1 / 12)
    for session in range(1, 6):
        female, male = make_speaker(0, session, "F"), make_speaker(0, session, "M")
        sad_female = female.f0 * semitone ** EMOTIONS["sad"].pitch
        angry_male = male.f0 * semitone ** EMOTIONS["ang"].pitch
        assert sad_female > angry_male
    assert len({make_speaker(0, s, "F").f0 for s in range(1, 6)}) == 5


def test_prepare_demo_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["prepare", "demo", "--out", str(out), "--clips-per-speaker", "5", "--seed", "1"]) == 0
    summary = capsys.readouterr().out
    assert "corpus demo: 50 utterances" in summary
    manifest = read_manifest(out)
    assert manifest.corpus == "demo" and manifest.labels == LABELS
    assert read_problems(out) == []
    folds = load_folds(out)
    assert len(folds) == 5
    session = dict(zip(manifest.table.utt_id, manifest.table.session))
    for fold in folds:
        assert {session[u] for u in fold.test} == {fold.index}
        assert fold.index not in {session[u] for u in fold.valid + fold.train}
        assert len(fold.valid) == 5
    assert main(["prepare", "demo", "--out", str(out), "--clips-per-speaker", "4", "--seed", "1"]) == 0
    assert len(list((out / "audio").rglob("*.wav"))) == 40
    assert main(["prepare", "demo", "--out", str(out), "--clips-per-speaker", "2"]) == 2
    assert "--clips-per-speaker must be at least 4" in capsys.readouterr().err


def test_prepare_demo_on_a_full_disk_names_the_clip(tmp_path, capsys, small_disks):
    """libsndfile said only "System error." when the disk filled; the clips are now written by Python."""
    disk = small_disks.mount(1)
    small_disks.fill(disk, leave=32 * 1024)
    assert main(["prepare", "demo", "--out", str(disk / "demo"), "--clips-per-speaker", "4"]) == 2
    err = capsys.readouterr().err
    assert f"tfmamba prepare: error: {disk / 'demo' / 'audio'}/Ses0" in err
    assert ": cannot write the demo clip (No space left on device)" in err


PREPARE_DEMO = ("import sys\nfrom tfmamba.demo import ensure_demo_data\n"
                "ensure_demo_data(sys.argv[1], clips_per_speaker=4, progress=False)\nprint('ready', flush=True)\n")


def test_a_second_command_waits_for_the_demo_data_another_prepares(tmp_path):
    """Two commands started at once on a fresh folder (`make demo` in two terminals, a sweep beside the Table III
    demo grid) both prepared the demo data, and the second ended in a traceback on the cache's writer lock. A command
    that finds the demo being prepared now waits for it, saying so, then goes on with the data the first made."""
    from tfmamba.process_lock import acquire

    root = tmp_path / "demo"
    with acquire(str(root), "demo"):  # this test is the command preparing it
        second = subprocess.Popen([sys.executable, "-c", PREPARE_DEMO, str(root)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        time.sleep(5)  # its imports take ~2 s
        assert second.poll() is None, second.communicate()[0]  # waiting, not preparing beside it
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    assert f"waiting for pid {os.getpid()} on " in output and ", which is preparing the demo data" in output
    assert output.rstrip().endswith("ready") and read_manifest(root / "corpus").table.shape[0] > 0
