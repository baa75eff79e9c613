"""`prepare csv` for any corpus: label order, relative paths, skips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.csvfile import build_from_csv, read_label_csv
from tfmamba.corpora.manifest import read_manifest, read_problems
from tfmamba.errors import DataError
from tfmamba.folds import load_folds


@pytest.fixture
def corpus(tmp_path):
    audio = tmp_path / "corpus" / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["path,label,speaker,session"]
    for session in (1, 2, 3):
        for i, label in enumerate(["calm", "angry", "calm", "happy"]):
            name = f"s{session}_{i}.wav"
            soundfile.write(audio / name, rng.normal(0, 0.1, 8000 + 1000 * i).astype(np.float32), 16000)
            lines.append(f"audio/{name},{label},spk{session}{i % 2},{session}")
    lines.append("audio/missing.wav,calm,spk10,1")
    (audio / "broken.wav").write_bytes(b"")
    lines.append("audio/broken.wav,happy,spk11,1")
    csv = tmp_path / "corpus" / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_build_from_csv(corpus):
    built = build_from_csv(corpus)
    assert built.labels == ["angry", "calm", "happy"]
    assert len(built.table) == 12
    assert set(built.table.session) == {1, 2, 3}
    assert all(p.startswith(str(corpus.parent / "audio")) for p in built.table.path)
    assert built.table.set_index("utt_id").loc["s2_3", "duration"] == pytest.approx(11000 / 16000)
    assert {(p.utt_id, p.reason) for p in built.problems} == {("missing", "missing file"), ("broken", "empty file (0 bytes)")}


def test_labels_option_sets_order_and_rejects_unknown(corpus):
    table, labels = read_label_csv(corpus, ["happy", "calm", "angry"])
    assert labels == ["happy", "calm", "angry"] and len(table) == 14
    with pytest.raises(DataError, match=r"labels.csv: unknown label 'angry' for 'audio/s1_1.wav' \(line 3\)"):
        read_label_csv(corpus, ["happy", "calm"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label,session\n", "empty CSV"),
        ("file,label,session\na.wav,x,1\n", r"missing columns \['path'\]"),
        ("path,label\na.wav,x\n", "'session' or a 'split'"),
        ("path,label,split\na/x.wav,x,train\nb/x.wav,y,test\n", r"duplicate utt_id \['x'\]"),
    ],
)
def test_bad_csv(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(DataError, match=message):
        read_label_csv(csv)


def test_prepare_csv_cli(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare", "csv", "--csv", str(corpus), "--out", str(out), "--labels", "calm", "happy", "angry"]
    assert main(args) == 0
    assert "corpus csv: 12 utterances" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest.labels == ["calm", "happy", "angry"]
    assert manifest.label_index("angry") == 2
    assert len(load_folds(out)) == 3
    assert len(read_problems(out)) == 2


def test_prepare_csv_all_files_bad_is_empty_manifest_error(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,split\nnone1.wav,a,train\nnone2.wav,b,test\n")
    assert main(["prepare", "csv", "--csv", str(csv), "--out", str(tmp_path / "out")]) == 2
    assert "empty manifest, no usable utterances (2 problems listed in" in capsys.readouterr().err
    assert len(read_problems(tmp_path / "out")) == 2
