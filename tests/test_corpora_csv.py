"""`prepare csv` for any corpus: label order, relative paths, skips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.csvfile import build_from_csv, read_label_csv
from tfmamba.corpora.folds import load_folds
from tfmamba.corpora.manifest import Problem, read_manifest, read_problems
from tfmamba.errors import DataError


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
    checked = read_label_csv(corpus, ["happy", "calm", "angry"])
    assert checked.labels == ["happy", "calm", "angry"] and len(checked.table) == 14
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


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_spreadsheets_semicolons_or_tabs_separate_columns_as_commas_do(corpus, separator):
    """Spreadsheets in many locales save "CSV" with semicolons; the header used to be read as one column, `missing
    columns ['path', 'label']`. A file in another encoding than UTF-8 says how to save it."""
    other = corpus.with_name("labels-other.csv")
    other.write_text(corpus.read_text().replace(",", separator))
    built = build_from_csv(other)
    assert built.labels == build_from_csv(corpus).labels and len(built.table) == 12
    latin = corpus.with_name("latin.csv")
    latin.write_bytes("path;label;session\naudio/caf\u00e9.wav;calm;1\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin.csv: unreadable CSV \('utf-8' codec .*\); save it as UTF-8$"):
        read_label_csv(latin)


def test_a_table_that_makes_no_folds_leaves_the_earlier_outputs_as_they_were(corpus, tmp_path, capsys):
    """One session makes no leave-one-session-out folds: the manifest used to be written before the folds failed,
    replacing a good one, and the folds.json beside it then belonged to another manifest."""
    out = tmp_path / "out"
    assert prepare(corpus, out) == 0
    before = {name: (out / name).read_bytes() for name in ("manifest.parquet", "folds.json")}
    one_session = corpus.with_name("one-session.csv")
    one_session.write_text("path,label,session\naudio/s1_0.wav,calm,1\naudio/s1_1.wav,angry,1\n")
    assert prepare(one_session, out) == 2
    assert "leave-one-session-out needs 2+ sessions, got [1]" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert len(load_folds(out, read_manifest(out))) == 3


def test_prepare_csv_all_files_bad_is_empty_manifest_error(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,split\nnone1.wav,a,train\nnone2.wav,b,test\n")
    assert main(["prepare", "csv", "--csv", str(csv), "--out", str(tmp_path / "out")]) == 2
    assert "empty manifest, no usable utterances (2 problems listed in" in capsys.readouterr().err
    assert len(read_problems(tmp_path / "out")) == 2


SPREADSHEET_ROWS = [
    ("angry", "1"), ("happy", "1"), ("neutral", "1"), ("sad", "1"),
    ("angry", "2"), ("happy", "2"), ("Neutral", "2"), ("sad", "2"),
    ("frustrated", "3"), ("", "3"), ("neutral", "3"), ("frustrated", "3"),
]


def write_corpus(folder, rows, header="label,session"):
    """A label CSV `path,<header>` with one short wav per row (clipNN.wav, line NN + 2)."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [f"path,{header}"]
    for i, cells in enumerate(rows):
        soundfile.write(audio / f"clip{i:02d}.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 16000)
        lines.append(",".join([f"audio/clip{i:02d}.wav", *cells]))
    csv = folder / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def prepare(csv, out, *options):
    return main(["prepare", "csv", "--csv", str(csv), "--out", str(out), *options])


def test_case_variants_stop_before_anything_is_written(tmp_path, capsys):
    csv = write_corpus(tmp_path / "corpus", SPREADSHEET_ROWS)
    assert prepare(csv, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "values that differ only in case or surrounding spaces; nothing was written" in err
    assert "label 'neutral' (2 rows, lines 4, 12), 'Neutral' (1 row, line 8)" in err
    assert "--label-map Neutral=neutral (repeatable), or --labels angry frustrated happy neutral sad" in err
    assert not (tmp_path / "out").exists()


def test_surrounding_spaces_are_a_variant_too(tmp_path):
    rows = [("neutral", "1"), ("neutral ", "1"), ("sad", "2"), ("sad", "2")]
    csv = write_corpus(tmp_path / "corpus", rows)
    with pytest.raises(DataError, match=r"label 'neutral' \(1 row, line 2\), 'neutral ' \(1 row, line 3\)") as err:
        read_label_csv(csv)
    assert "--label-map 'neutral =neutral'" in str(err.value)
    assert read_label_csv(csv, label_map={"neutral ": "neutral"}).labels == ["neutral", "sad"]


def test_label_map_merges_variants_and_skips_an_empty_label_as_no_label(tmp_path, capsys):
    csv = write_corpus(tmp_path / "corpus", SPREADSHEET_ROWS)
    out = tmp_path / "out"
    assert prepare(csv, out, "--label-map", "Neutral=neutral") == 0
    summary = capsys.readouterr().out
    assert "classes, in the model's output order: 0 angry, 1 frustrated, 2 happy, 3 neutral, 4 sad" in summary
    manifest = read_manifest(out)
    assert manifest.labels == ["angry", "frustrated", "happy", "neutral", "sad"]
    assert (manifest.table.label == "neutral").sum() == 3 and len(manifest) == 11
    assert read_problems(out) == [Problem("clip09", str(csv.parent / "audio" / "clip09.wav"), "no label")]
    assert "1 x no label" in summary


def test_labels_option_matches_ignoring_case_and_needs_every_label(tmp_path, capsys):
    csv = write_corpus(tmp_path / "corpus", SPREADSHEET_ROWS)
    assert prepare(csv, tmp_path / "out", "--labels", "neutral", "angry", "happy", "sad", "frustrated") == 2
    assert "no label for 'audio/clip09.wav' (line 11); with --labels every row needs one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    rows = [row for row in SPREADSHEET_ROWS if row[0]]
    csv = write_corpus(tmp_path / "filled", rows)
    assert prepare(csv, tmp_path / "out", "--labels", "Neutral", "angry", "happy", "sad", "frustrated") == 0
    assert "classes, in the model's output order: 0 Neutral, 1 angry, 2 happy, 3 sad, 4 frustrated" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "out")
    assert manifest.labels == ["Neutral", "angry", "happy", "sad", "frustrated"]
    assert (manifest.table.label == "Neutral").sum() == 3


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("label,session", [("a", "Ses1"), ("a", "ses1"), ("b", "2")], "session 'Ses1' (1 row, line 2), 'ses1' (1 row, line 3)"),
        ("label,split", [("a", "train"), ("a", "Train"), ("b", "test")], "split 'train' (1 row, line 2), 'Train' (1 row, line 3)"),
        ("label,session", [("a", "1"), ("a", " 1"), ("b", "2")], "session '1' (1 row, line 2), ' 1' (1 row, line 3)"),
    ],
    ids=["session-case", "split-case", "session-spaces"],
)
def test_session_and_split_variants_stop_the_build(tmp_path, header, rows, message):
    csv = write_corpus(tmp_path / "corpus", rows, header)
    with pytest.raises(DataError, match="differ only in case or surrounding spaces") as err:
        read_label_csv(csv)
    assert message in str(err.value)
    assert "one spelling per" in str(err.value)


@pytest.mark.parametrize(
    ("header", "rows", "reason"),
    [
        ("label,session", [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2"), ("a", "")], "no session"),
        ("label,split", [("a", "train"), ("b", "train"), ("a", "test"), ("b", "test"), ("a", " ")], "no split"),
    ],
    ids=["session", "split"],
)
def test_an_empty_session_or_split_is_skipped_not_a_fold(tmp_path, header, rows, reason):
    checked = read_label_csv(write_corpus(tmp_path / "corpus", rows, header))
    assert len(checked.table) == 4
    assert [(p.utt_id, p.reason) for p in checked.problems] == [("clip04", reason)]


def test_an_empty_row_is_skipped_as_no_path(tmp_path):
    csv = write_corpus(tmp_path / "corpus", [("a", "1"), ("b", "2")])
    csv.write_text(csv.read_text() + ",,\n")
    checked = read_label_csv(csv)
    assert checked.labels == ["a", "b"]
    assert [p.reason for p in checked.problems] == ["no path (line 4)"]


def test_unknown_split_is_named_with_its_line(tmp_path):
    csv = write_corpus(tmp_path / "corpus", [("a", "train"), ("b", "validation")], "label,split")
    with pytest.raises(DataError, match=r"unknown split 'validation' \(line 3\)"):
        read_label_csv(csv)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--label-map", "Neutral"], "--label-map 'Neutral': expected OLD=NEW"),
        (["--label-map", "a=b", "--label-map", "a=c"], "--label-map maps 'a' to both 'b' and 'c'"),
        (["--labels", "neutral", "Neutral"], "--labels: 'neutral' and 'Neutral' are the same label"),
    ],
    ids=["no-equals", "two-targets", "labels-twice"],
)
def test_bad_label_options_are_refused(tmp_path, capsys, options, message):
    csv = write_corpus(tmp_path / "corpus", [("a", "1"), ("b", "2")])
    assert prepare(csv, tmp_path / "out", *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prepare_csv_on_a_full_disk_says_so_in_one_line(corpus, capsys, small_disks):
    """An OSError from writing (here pyarrow's, with its errno) is the machine's trouble: one line and exit 1, no
    traceback; `tfmamba -v` logs where it happened."""
    disk = small_disks.mount(1)
    small_disks.fill(disk, leave=0)
    assert main(["prepare", "csv", "--csv", str(corpus), "--out", str(disk / "out")]) == 1
    err = capsys.readouterr().err
    assert "tfmamba prepare: error: No space left on device" in err and "(tfmamba -v shows where it happened)" in err
    assert "Traceback" not in err
