"""`tfmamba features` end to end on a tiny manifest: summary, resume, refusal of another extractor."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.manifest import write_manifest
from tfmamba.features.store import FeatureStore
from tfmamba.features.writer import FeatureWriter


def make_manifest(folder) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        path = folder / f"c{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(8000 + 1600 * i)).astype(np.float32), 16000)
        rows.append({"utt_id": f"c{i}", "path": str(path), "label": ["neu", "ang"][i % 2], "speaker": "Ses01F",
                     "duration": (8000 + 1600 * i) / 16000, "session": 1})
    (folder / "c4.wav").write_bytes(b"broken")
    write_manifest(pd.DataFrame(rows), folder / "m", "demo", ["neu", "ang"])
    return str(folder / "m")


def test_features_command_writes_resumes_and_refuses_a_mix(tmp_path, capsys):
    manifest, out = make_manifest(tmp_path), str(tmp_path / "cache")
    args = ["features", "--manifest", manifest, "--extractor", "fbank", "--out", out, "--shard-size", "2",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"feature cache: {out}" in printed and "4 written, 1 skipped, 0 already done" in printed
    assert "MB/s" in printed and "problems.csv (1 rows)" in printed
    assert main(args) == 0
    assert "0 written, 1 skipped, 4 already done" in capsys.readouterr().out
    store = FeatureStore.open(out, expect_extractor="fbank")
    assert len(store) == 4 and store.dim == 80
    assert main([*args[:4], "fbank-cmvn", *args[5:]]) == 2
    assert "built differently" in capsys.readouterr().err


def test_an_interrupted_build_keeps_what_it_wrote_and_the_same_command_goes_on(tmp_path, capsys, monkeypatch):
    """Ctrl-C used to end `tfmamba features` in a KeyboardInterrupt traceback. It ends in one line saying what is
    kept, exit status 130; the utterances extracted before it are in the cache and a rerun goes on after them. The
    interruption is raised where SIGINT lands: between clips, here as the third reaches the writer."""
    manifest, out = make_manifest(tmp_path), tmp_path / "cache"
    args = ["features", "--manifest", manifest, "--extractor", "fbank", "--out", str(out), "--shard-size", "2",
            "--no-progress"]
    add, added = FeatureWriter.add, []

    def interrupted_at_the_third(self, *a, **k):
        if len(added) == 2:
            raise KeyboardInterrupt
        added.append(a[0])
        return add(self, *a, **k)

    monkeypatch.setattr(FeatureWriter, "add", interrupted_at_the_third)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"tfmamba features: interrupted; the utterances already written to {out} are kept, and the "
                        "same command goes on after them\n") and "Traceback" not in err, err
    monkeypatch.undo()
    assert main(args) == 0
    assert "2 written, 1 skipped, 2 already done" in capsys.readouterr().out


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path, capsys):
    """`--out /proc/fc` (or a path under a file) said only `No such file or directory`, naming no path."""
    manifest = make_manifest(tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "cache"
    assert main(["features", "--manifest", manifest, "--extractor", "fbank", "--out", str(out), "--no-progress"]) == 2
    assert f"tfmamba features: error: {out}: cannot make the feature cache's folder (" in capsys.readouterr().err


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_shards_written(tmp_path, capsys, small_disks):
    """Room for the first shard only: `tfmamba features` used to end in two chained OSError tracebacks (its exit
    flushed the failed shard again). It names the cache, the shard and the reason, removes the partial file, keeps
    the first shard, and once there is room the same command goes on after it."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):  # 3 s each: ~48 KB of float16 frames, a shard of 2 ~96 KB
        path = tmp_path / f"long{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(48000)).astype(np.float32), 16000)
        rows.append({"utt_id": f"long{i}", "path": str(path), "label": ["neu", "ang"][i % 2], "speaker": "Ses01F",
                     "duration": 3.0, "session": 1})
    write_manifest(pd.DataFrame(rows), tmp_path / "m", "demo", ["neu", "ang"])
    disk = small_disks.mount(2)
    out = disk / "cache"
    args = ["features", "--manifest", str(tmp_path / "m"), "--extractor", "fbank", "--out", str(out),
            "--shard-size", "2", "--no-progress"]
    filler = small_disks.fill(disk, leave=150 * 1024)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (f"tfmamba features: error: {out}: cannot write the feature shard shard-00001.parquet (No space left on "
            "device); the 2 utterances already in the cache are kept, and a rerun of the same command goes on after "
            "them") in err, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".writer")) == [
        "features.json", "shard-00000.parquet"]

    filler.unlink()
    assert main(args) == 0
    assert "2 written, 0 skipped, 2 already done" in capsys.readouterr().out
    assert len(FeatureStore.open(str(out), expect_extractor="fbank")) == 4


def test_a_cache_path_the_console_cannot_write_does_not_end_the_command(tmp_path):
    """On an ASCII console the summary's `feature cache: .../caché` line used to raise UnicodeEncodeError after the
    cache was written (stdout is strict; stderr already replaced what it could not write)."""
    import os
    import subprocess
    import sys

    manifest, out = make_manifest(tmp_path), tmp_path / "caché"
    done = subprocess.run([sys.executable, "-m", "tfmamba.cli", "features", "--manifest", manifest, "--extractor",
                           "fbank", "--out", str(out), "--no-progress"], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert f"feature cache: {tmp_path}/cach?".encode() in done.stdout


def test_a_build_where_every_clip_is_skipped_fails_and_a_rerun_takes_them_once_mended(tmp_path, capsys):
    """Every clip missing (the audio moved after `prepare`) gave an empty cache and exit status 0, so a script went on
    to train on nothing. It is now status 1 naming problems.csv; once the clips are back the same command adds them."""
    manifest, out = make_manifest(tmp_path), str(tmp_path / "cache")
    moved = tmp_path / "moved"
    moved.mkdir()
    for clip in tmp_path.glob("c*.wav"):
        clip.rename(moved / clip.name)
    args = ["features", "--manifest", manifest, "--extractor", "fbank", "--out", out, "--no-progress"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "0 written, 5 skipped" in captured.out
    assert ("tfmamba features: error: no utterance could be extracted; every clip is missing (the first: "
            f"{tmp_path}/c") in captured.err and "has the audio moved since the manifest was made?" in captured.err
    assert f"why each was skipped is in {out}" in captured.err and "  skipped: 5 missing file" in captured.out
    for clip in moved.iterdir():
        clip.rename(tmp_path / clip.name)
    assert main(args) == 0
    assert "4 written, 1 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("command, option, value", [
    (["features", "--manifest", "m", "--out", "c"], "--max-seconds", "nan"),
    (["features", "--manifest", "m", "--out", "c"], "--max-seconds", "0.01"),
    (["features", "--manifest", "m", "--out", "c"], "--hard-cap-seconds", "0"),
    (["predict", "clip.wav", "--model", "m"], "--window-seconds", "nan"),
    (["predict", "clip.wav", "--model", "m"], "--window-seconds", "-1"),
])
def test_window_and_cap_lengths_are_refused_as_they_are_read(capsys, command, option, value):
    """`--max-seconds nan` was a ValueError traceback mid-build, `0.01` cut every clip into 160-sample windows, and
    `--hard-cap-seconds 0` skipped every clip; predict checked its window only after loading the model."""
    with pytest.raises(SystemExit) as exited:
        main([*command, option, value])
    assert exited.value.code == 2
    assert (f"tfmamba {command[0]}: error: argument {option}: '{value}': give a number of seconds, at least 1"
            in capsys.readouterr().err)
