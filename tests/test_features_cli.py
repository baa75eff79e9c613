"""`tfmamba features` end to end on a tiny manifest: summary, resume, refusal of another extractor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import soundfile

from tfmamba.cli import main
from tfmamba.corpora.manifest import write_manifest
from tfmamba.features.store import FeatureStore


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
