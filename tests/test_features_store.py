"""The Parquet feature cache: write/read round trip, resume, interrupted writes, bad input, URIs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from tfmamba.corpora.manifest import LOGGED_PER_REASON, read_problems
from tfmamba.errors import DataError
from tfmamba.features.build import build_cache
from tfmamba.features.factory import get_extractor
from tfmamba.features.fbank import FbankExtractor
from tfmamba.features.store import FeatureStore
from tfmamba.features.writer import FeatureWriter

IDENTITY = {"extractor": "fbank", "revision": "fbank-v1", "layer": None, "dim": 4, "frame_rate": 100.0,
            "sample_rate": 16000}


def corpus(folder, n: int = 7, seed: int = 0) -> pd.DataFrame:
    """n short wav clips of different lengths and their manifest-like table."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = 0.3 + 0.2 * i
        path = folder / f"u{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        rows.append({"utt_id": f"u{i}", "path": str(path), "label": "neu", "duration": seconds})
    return pd.DataFrame(rows)


def random_frames(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"utt{i}": rng.standard_normal((3 + 5 * i, 4)).astype(np.float32) for i in range(n)}


def test_round_trip_is_one_contiguous_array(tmp_path):
    data = random_frames(5)
    with FeatureWriter(str(tmp_path / "c"), IDENTITY, "h1", shard_size=2) as writer:
        for utt_id, frames in data.items():
            writer.add(utt_id, frames)
    store = FeatureStore.open(str(tmp_path / "c"), expect_extractor="fbank", manifest="h1")
    assert len(store) == 5 and store.dim == 4 and len(store.metadata["shards"]) == 3
    assert store.features.dtype == np.float16 and store.features.flags["C_CONTIGUOUS"]
    assert store.features.shape == (sum(len(f) for f in data.values()), 4)
    assert store.offsets.dtype == np.int64 and list(store.lengths) == [len(f) for f in data.values()]
    for utt_id, frames in data.items():
        assert utt_id in store
        got = store.get(utt_id)
        assert np.shares_memory(got, store.features)
        np.testing.assert_array_equal(got, frames.astype(np.float16))
    assert "nope" not in store
    with pytest.raises(DataError, match="nope"):
        store.get("nope")
    meta = store.metadata
    assert (meta["n_utts"], meta["dtype"], meta["manifest_hash"], meta["extractor"]) == (5, "float16", "h1", "fbank")
    assert {"created", "tfmamba_version", "frame_rate", "revision", "layer"} <= set(meta)


def test_build_from_audio_then_resume_skips_done(tmp_path, capsys):
    """A rerun over a complete cache writes nothing, and shows no empty progress bar (`make demo`'s second run)."""
    table = corpus(tmp_path)
    ext = get_extractor("fbank")
    first = build_cache(table, "h", ext, str(tmp_path / "c"), batch_size=3, shard_size=4, progress=True)
    assert (first.written, first.skipped, first.already_done, first.cache_utts) == (7, 0, 0, 7)
    assert first.cache_bytes > 0 and first.utts_per_s > 0 and "7 written" in first.summary()
    assert "features: 100%" in capsys.readouterr().err
    again = build_cache(table, "h", ext, str(tmp_path / "c"), progress=True)
    assert (again.written, again.already_done, again.cache_utts) == (0, 7, 7)
    assert "features" not in capsys.readouterr().err
    store = FeatureStore.open(str(tmp_path / "c"))
    assert sorted(store.utt_ids) == sorted(table["utt_id"])
    (direct,) = ext([soundfile.read(table["path"][3], dtype="float32")[0]])
    np.testing.assert_array_equal(store.get("u3"), direct.astype(np.float16))


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    table = corpus(tmp_path)
    ext = get_extractor("fbank")
    writer = FeatureWriter(str(tmp_path / "c"), ext.describe(), "h", shard_size=2)
    for utt_id, wave in zip(table["utt_id"][:3], ext([soundfile.read(p)[0] for p in table["path"][:3]])):
        writer.add(utt_id, wave)  # 2 flushed as a shard, 1 pending and lost: the run is killed here
    writer.release()  # as a killed process's lock goes with it
    (tmp_path / "c" / ".tmp-0123-shard-00001.parquet").write_bytes(b"PAR1 half a shard")
    report = build_cache(table, "h", ext, str(tmp_path / "c"), progress=False)
    assert (report.already_done, report.written) == (2, 5)
    assert not list((tmp_path / "c").glob(".tmp-*"))
    assert sorted(FeatureStore.open(str(tmp_path / "c")).utt_ids) == sorted(table["utt_id"])


def test_one_writer_at_a_time(tmp_path):
    """A second writer of a cache being written (another `tfmamba features` on it) is refused, naming the first, and
    touches nothing: it used to delete the first's temporary shard and reuse its shard names."""
    first = FeatureWriter(str(tmp_path), IDENTITY, "h", shard_size=1)
    first.add("a", np.ones((3, 4), np.float32))
    (tmp_path / ".tmp-0123-shard-00001.parquet").write_bytes(b"the first writer's shard in the making")
    busy = rf"feature cache {tmp_path} is being written by another process \(pid {os.getpid()} on "
    with pytest.raises(DataError, match=busy):
        FeatureWriter(str(tmp_path), IDENTITY, "h", shard_size=1)
    assert (tmp_path / ".tmp-0123-shard-00001.parquet").exists()
    first.close()
    with FeatureWriter(str(tmp_path), IDENTITY, "h") as second:  # free again once the first is done
        second.add("b", np.ones((2, 4), np.float32))
    assert sorted(FeatureStore.open(str(tmp_path)).utt_ids) == ["a", "b"]


def test_reader_ignores_leftover_tmp_files(tmp_path):
    with FeatureWriter(str(tmp_path), IDENTITY, "h") as writer:
        writer.add("a", np.ones((3, 4), np.float32))
    (tmp_path / ".tmp-dead-shard-00001.parquet").write_bytes(b"garbage")
    assert FeatureStore.open(str(tmp_path)).utt_ids == ["a"]


def test_a_shard_renamed_but_not_listed_is_adopted(tmp_path):
    """Killed between a shard's rename and the metadata update: the complete shard is kept, not redone."""
    with FeatureWriter(str(tmp_path), IDENTITY, "h", shard_size=1) as writer:
        writer.add("a", np.ones((3, 4), np.float32))
        before = (tmp_path / "features.json").read_text()
        writer.add("b", np.zeros((2, 4), np.float32))
    (tmp_path / "features.json").write_text(before)
    writer = FeatureWriter(str(tmp_path), IDENTITY, "h")
    assert writer.done == {"a", "b"}
    store = FeatureStore.open(str(tmp_path))
    assert store.utt_ids == ["a", "b"] and store.features.shape == (5, 4)


def test_nan_inf_and_float16_overflow_are_rejected(tmp_path):
    writer = FeatureWriter(str(tmp_path), IDENTITY, "h")
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="u-nan.*NaN"):
        writer.add("u-nan", bad)
    with pytest.raises(DataError, match="u-big.*float16"):
        writer.add("u-big", np.full((2, 4), 1e6, np.float32))
    with pytest.raises(DataError, match="shape"):
        writer.add("u-shape", np.ones((2, 5), np.float32))
    writer.close()
    assert FeatureStore.open(str(tmp_path)).utt_ids == []


class NanOnLongClips(FbankExtractor):
    """A real extractor whose output breaks on clips over 1.2 s, to drive the NaN path end to end."""

    def _extract(self, waves):
        outs = super()._extract(waves)
        return [o * np.nan if len(w) > 1.2 * 16000 else o for w, o in zip(waves, outs)]


def test_bad_audio_and_nan_features_go_to_problems(tmp_path):
    table = corpus(tmp_path, n=6)
    (tmp_path / "u0.wav").write_bytes(b"not a wav file at all")
    (tmp_path / "u1.wav").unlink()
    soundfile.write(tmp_path / "u2.wav", np.zeros(100, np.float32), 16000)
    report = build_cache(table, "h", NanOnLongClips(), str(tmp_path / "c"), progress=False)
    problems = {p.utt_id: p.reason for p in read_problems(tmp_path / "c" / "problems.csv")}
    assert set(problems) == {"u0", "u1", "u2", "u5"} and report.skipped == 4
    assert "missing" in problems["u1"] and "too short" in problems["u2"] and "NaN" in problems["u5"]
    assert sorted(FeatureStore.open(str(tmp_path / "c")).utt_ids) == ["u3", "u4"]


def test_a_corpus_that_moved_is_not_a_flood_of_warnings(tmp_path, caplog):
    """Every clip missing (the audio moved after `prepare`) logged one warning per clip: 5531 lines for IEMOCAP.
    The first few are logged, the rest counted by kind in the summary; problems.csv keeps every one, its reason
    without the path that has a column of its own."""
    table = corpus(tmp_path, n=LOGGED_PER_REASON + 5)
    for path in table["path"]:
        Path(path).unlink()
    with caplog.at_level(logging.WARNING, logger="tfmamba.features.build"):
        report = build_cache(table, "h", FbankExtractor(), str(tmp_path / "c"), progress=False)
    assert len(caplog.records) == LOGGED_PER_REASON + 1 and "... and 5 more skipped (all listed in problems.csv)" in caplog.text
    assert report.skip_kinds() == {"missing file": LOGGED_PER_REASON + 5}
    assert f"  skipped: {LOGGED_PER_REASON + 5} missing file\n" in report.summary()
    problems = read_problems(tmp_path / "c" / "problems.csv")
    assert len(problems) == LOGGED_PER_REASON + 5 and {p.reason for p in problems} == {"missing file"}


def test_asking_for_another_extractor_is_an_error(tmp_path):
    with FeatureWriter(str(tmp_path), IDENTITY, "h") as writer:
        writer.add("a", np.ones((3, 4), np.float32))
    with pytest.raises(DataError, match="holds features of extractor 'fbank'.*microsoft/wavlm-large"):
        FeatureStore.open(str(tmp_path), expect_extractor="microsoft/wavlm-large")
    with pytest.raises(DataError, match="layer"):
        FeatureStore.open(str(tmp_path), expect_extractor="fbank", expect_layer=6)
    with pytest.raises(DataError, match="extractor: cache has 'fbank'"):
        FeatureWriter(str(tmp_path), {**IDENTITY, "extractor": "other"}, "h")


def test_manifest_hash_mismatch_is_an_error(tmp_path):
    with FeatureWriter(str(tmp_path), IDENTITY, "h1") as writer:
        writer.add("a", np.ones((3, 4), np.float32))
    with pytest.raises(DataError, match="another manifest"):
        FeatureStore.open(str(tmp_path), manifest="h2")
    with pytest.raises(DataError, match="manifest_hash"):
        FeatureWriter(str(tmp_path), IDENTITY, "h2")


def test_file_uri_and_missing_cache(tmp_path):
    uri = (tmp_path / "c").as_uri()
    assert uri.startswith("file://")
    with FeatureWriter(uri, IDENTITY, "h") as writer:
        writer.add("a", np.ones((3, 4), np.float32))
        path = writer.write_problems([{"utt_id": "x", "path": "/x.wav", "reason": "missing"}])
    assert path == f"{uri}/problems.csv"
    assert FeatureStore.open(uri).utt_ids == FeatureStore.open(str(tmp_path / "c")).utt_ids == ["a"]
    with pytest.raises(DataError, match="no feature cache"):
        FeatureStore.open(str(tmp_path / "empty"))


def test_a_listed_shard_that_vanished_is_a_clear_error(tmp_path):
    with FeatureWriter(str(tmp_path), IDENTITY, "h") as writer:
        writer.add("a", np.ones((3, 4), np.float32))
    meta = json.loads((tmp_path / "features.json").read_text())
    (tmp_path / meta["shards"][0]["file"]).unlink()
    with pytest.raises(DataError, match="unreadable"):
        FeatureStore.open(str(tmp_path))
    shutil.rmtree(tmp_path)


def test_the_features_package_imports_neither_torch_nor_transformers():
    code = "import sys, tfmamba.features; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
