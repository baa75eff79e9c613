"""Manifest Parquet format, validation errors, hash and problems.csv."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tfmamba.corpora.manifest import (
    Manifest,
    Problem,
    manifest_hash,
    read_manifest,
    read_problems,
    write_manifest,
    write_problems,
)
from tfmamba.errors import DataError

LABELS = ["neu", "hap", "ang", "sad"]


def table(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(n)],
            "path": [f"/audio/u{i}.wav" for i in range(n)],
            "label": [LABELS[i % 4] for i in range(n)],
            "speaker": ["Ses01F"] * n,
            "duration": [1.0 + i for i in range(n)],
            "session": [1 + i % 2 for i in range(n)],
        }
    )


def test_roundtrip_with_metadata(tmp_path):
    written = write_manifest(table(), tmp_path / "out", "demo", LABELS, {"note": "x"})
    assert written.path == tmp_path / "out" / "manifest.parquet"
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(written.path).metadata.items()}
    assert meta["corpus"] == "demo"
    assert json.loads(meta["labels"]) == LABELS
    assert meta["manifest_hash"] == manifest_hash(written)
    assert meta["note"] == "x"
    for source in (tmp_path / "out", written.path):
        manifest = read_manifest(source)
        assert manifest.corpus == "demo" and manifest.labels == LABELS
        pd.testing.assert_frame_equal(manifest.table, table())
    assert manifest.label_index("ang") == 2
    assert manifest.num_classes == 4 and len(manifest) == 6
    with pytest.raises(DataError, match="unknown label 'fru'"):
        manifest.label_index("fru")


def test_hash_ignores_row_order_but_not_content():
    base = manifest_hash(table(), LABELS)
    assert manifest_hash(table().iloc[::-1], LABELS) == base
    changed = table()
    changed.loc[2, "path"] = "/elsewhere/u2.wav"
    assert manifest_hash(changed, LABELS) != base
    assert manifest_hash(table(), list(reversed(LABELS))) != base
    assert manifest_hash(Manifest(table(), "demo", LABELS)) == base


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.iloc[0:0], "empty manifest"),
        (lambda t: t.drop(columns="speaker"), r"missing columns \['speaker'\]"),
        (lambda t: t.drop(columns="session"), "'session' or a 'split'"),
        (lambda t: t.assign(utt_id=["u0", "u0", "u2", "u3", "u4", "u5"]), r"duplicate utt_id \['u0'\]"),
        (lambda t: t.assign(label=["neu", "fru", "ang", "sad", "neu", "hap"]), r"unknown label 'fru' for utterance 'u1' \(/audio/u1.wav\)"),
        (lambda t: t.assign(path=["rel.wav"] + list(t.path[1:])), "absolute"),
        (lambda t: t.assign(duration=[0.0, 1, 1, 1, 1, 1]), "bad duration"),
        (lambda t: t.drop(columns="session").assign(split="val"), r"unknown split values \['val'\]"),
    ],
)
def test_validation_errors(tmp_path, edit, message):
    with pytest.raises(DataError, match=message):
        write_manifest(edit(table()), tmp_path, "demo", LABELS)
    assert not (tmp_path / "manifest.parquet").exists()


def test_read_errors(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="unreadable manifest"):
        read_manifest(tmp_path)
    table().to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(DataError, match="not a tfmamba manifest"):
        read_manifest(tmp_path)


def test_edited_manifest_is_detected(tmp_path):
    import pyarrow as pa

    written = write_manifest(table(), tmp_path, "demo", LABELS)
    arrow = pq.read_table(written.path)
    edited = table()
    edited.loc[0, "label"] = "sad"
    pq.write_table(pa.Table.from_pandas(edited, preserve_index=False).replace_schema_metadata(arrow.schema.metadata), written.path)
    with pytest.raises(DataError, match="does not match its recorded hash"):
        read_manifest(tmp_path)


def test_problems_csv_roundtrip(tmp_path):
    problems = [Problem("u1", "/a/b, c.wav", "missing file"), Problem("", "/x.mp4", 'clip has no row in "x"')]
    path = write_problems(problems, tmp_path / "problems.csv")
    assert path.read_text().splitlines()[0] == "utt_id,path,reason"
    assert read_problems(tmp_path) == problems
    write_problems([], path)
    assert path.read_text() == "utt_id,path,reason\n"
    assert read_problems(path) == []
