"""Rows of docs/bad-inputs.md that no other test file covers end to end: odd rates, stereo and long clips
through the feature cache, duplicate ids at extraction, and bad settings on the train command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.manifest import read_problems
from tfmamba.errors import DataError
from tfmamba.features.build import build_cache
from tfmamba.features.factory import get_extractor
from tfmamba.features.store import FeatureStore


def chirp(seconds: float, rate: int) -> np.ndarray:
    """The same band-limited signal at any rate (harmonics under 4 kHz, so 8 kHz keeps all of it)."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * (150 * t + 60 * t**2)
    return (0.3 * sum(np.sin(k * phase) / k for k in range(1, 8))).astype(np.float32)


def table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"utt_id": utt, "path": path, "label": "neu"} for utt, path in rows])


def test_cache_resamples_other_rates_and_mixes_stereo_down(tmp_path):
    mono16, mono8, wide = chirp(1.5, 16000), chirp(1.5, 8000), chirp(1.5, 44100)
    soundfile.write(tmp_path / "a.wav", mono16, 16000)
    soundfile.write(tmp_path / "b.flac", mono8, 8000)
    soundfile.write(tmp_path / "c.wav", np.stack([wide, wide], axis=1), 44100, subtype="FLOAT")
    rows = table([("a", str(tmp_path / "a.wav")), ("b", str(tmp_path / "b.flac")), ("c", str(tmp_path / "c.wav"))])
    report = build_cache(rows, "h", get_extractor("fbank"), str(tmp_path / "cache"), progress=False)
    assert report.written == 3 and report.skipped == 0
    store = FeatureStore.open(str(tmp_path / "cache"))
    reference = store.get("a").astype(np.float32)
    for utt in ("b", "c"):
        other = store.get(utt).astype(np.float32)
        assert other.shape == reference.shape
        assert np.median(np.abs(other - reference)) < 0.1, utt
    reversed_clip = get_extractor("fbank")([mono16[::-1].copy()])[0]
    assert np.median(np.abs(reversed_clip - reference)) > 0.5


def test_cache_windows_a_long_clip_and_skips_one_over_the_hard_cap(tmp_path):
    soundfile.write(tmp_path / "long.wav", chirp(70.0, 8000), 8000, subtype="PCM_16")
    soundfile.write(tmp_path / "huge.wav", chirp(130.0, 8000), 8000, subtype="PCM_16")
    soundfile.write(tmp_path / "short.wav", chirp(1.0, 16000), 16000)
    rows = table([(name, str(tmp_path / f"{name}.wav")) for name in ("short", "long", "huge")])
    report = build_cache(rows, "h", get_extractor("fbank", max_seconds=30.0), str(tmp_path / "cache"),
                         hard_cap_seconds=100.0, progress=False)
    assert report.written == 2 and report.windowed == 1
    problems = read_problems(tmp_path / "cache" / "problems.csv")
    assert [p.utt_id for p in problems] == ["huge"] and "longer than the cap (" in problems[0].reason
    store = FeatureStore.open(str(tmp_path / "cache"))
    assert sorted(store.utt_ids) == ["long", "short"]
    assert len(store.get("long")) == pytest.approx(7000, abs=10)


def test_extraction_refuses_duplicate_utt_ids_before_writing(tmp_path):
    soundfile.write(tmp_path / "a.wav", chirp(1.0, 16000), 16000)
    rows = table([("a", str(tmp_path / "a.wav")), ("a", str(tmp_path / "a.wav"))])
    with pytest.raises(DataError, match=r"duplicate utt_id in the manifest: \['a'\]"):
        build_cache(rows, "h", get_extractor("fbank"), str(tmp_path / "cache"), progress=False)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("cmdt_temperature=-0.1", "cmdt_temperature"),
        ("d_state=0", "d_state"),
        ("d_stat=16", "d_stat"),
    ],
)
def test_train_command_refuses_bad_settings_before_writing_anything(tmp_path, capsys, setting, message):
    out = tmp_path / "run"
    assert main(["train", "--set", setting, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfmamba train: error:") and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", ""], "--out is empty (an unset shell variable?)"),  # trained into runs/train/fold-1
        (["train", "--config", " "], "--config is empty"),  # "Is a directory: ."
        (["predict", "a.wav", "--model", "m", "--tracking-uri", ""], "--tracking-uri is empty"),
        (["prepare", "demo", "--out", ""], "argument --out: '' is empty"),  # wrote the manifest into ./
        (["prepare", "csv", "--csv", "", "--out", "o"], "argument --csv: '' is empty"),  # "Is a directory"
    ],
)
def test_an_option_given_an_empty_value_is_refused_naming_it(tmp_path, monkeypatch, capsys, argv, message):
    """`--out "$OUT"` with OUT unset: the value is empty, and taken as "not given" it silently meant a default."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_train_command_refuses_a_config_file_with_a_typo(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("d_model: 64\ncmdt_temprature: 0.1\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "cmdt_temprature" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_damaged_weights_file_is_a_data_error(tmp_path):
    from tfmamba.checkpoint import load_weights
    from tfmamba.errors import DataError

    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unreadable weights"):
        load_weights(damaged)
