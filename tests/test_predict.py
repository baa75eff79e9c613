"""`tfmamba predict` and `tfmamba.predict.Predictor`: audio formats, windows, batches with bad files,
model folder checks, MLflow URIs, and a model trained on the demo corpus predicting its held-out clips."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from logged_model import log_model
from media import write_mp4

from tfmamba.checkpoint import save_weights
from tfmamba.cli import main
from tfmamba.errors import ConfigError, DataError
from tfmamba.features.fbank import FbankExtractor
from tfmamba.model import ModelConfig, TFMamba
from tfmamba.predict import Predictor, find_audio
from tfmamba.training.outputs import FORMAT_VERSION

LABELS = ["neu", "hap", "ang", "sad"]
TINY = dict(d_model=16, d_state=8, headdim=8, num_heads=2, ffn_dim=16, classifier_dims=[16], chunk_size=16,
            ssd_backend="torch", dropout=0.0)
ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = ROOT / "data" / "demo"


def write_model_folder(folder: Path, seed: int = 0) -> Path:
    """An untrained fbank model in the trainer's output format (model.safetensors + model.json).

    The output layer is scaled up so that its probabilities differ clearly between inputs."""
    torch.manual_seed(seed)
    config = ModelConfig(input_dim=80, num_classes=len(LABELS), **TINY)
    weights = {k: v.contiguous() for k, v in TFMamba(config).state_dict().items()}
    weights["classifier.3.weight"] = weights["classifier.3.weight"] * 5.0
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(weights, folder / "model.safetensors")
    description = {"format_version": FORMAT_VERSION, "tfmamba_version": "test", "model": config.to_dict(),
                   "labels": LABELS, "feature": FbankExtractor().describe(), "input_norm": {"mode": "none"}}
    (folder / "model.json").write_text(json.dumps(description), encoding="utf-8")
    return folder


def tamper(folder: Path, edit) -> Path:
    description = json.loads((folder / "model.json").read_text())
    edit(description)
    (folder / "model.json").write_text(json.dumps(description))
    return folder


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A pitch glide with harmonics under a slow loudness contour; the same signal at any rate."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    envelope = 0.3 + 0.2 * np.sin(2 * np.pi * 0.5 * t + 2 * seed)
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * envelope * 0.5
    return wave.astype(np.float32)



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return write_model_folder(tmp_path_factory.mktemp("model") / "fold-1")


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.load(model_dir, device="cpu")


def test_load_reads_the_extractor_from_model_json(predictor):
    assert predictor.labels == LABELS
    assert predictor.extractor.name == "fbank" and predictor.extractor.dim == 80
    assert predictor.window_seconds == 30.0
    prediction = predictor.predict_wave(speechlike(1.5), 16000)
    assert prediction.ok and prediction.label in LABELS and prediction.windows == 1
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    with pytest.raises(DataError, match="clip: too short .*at least 400"):
        predictor.predict_wave(speechlike(0.005), 16000, name="clip")


def test_wav_flac_stereo_44k_and_mp4_give_the_same_prediction(predictor, tmp_path):
    mono = speechlike(2.0, 44100)
    soundfile.write(tmp_path / "a.wav", speechlike(2.0, 16000), 16000)
    soundfile.write(tmp_path / "b.flac", mono, 44100)
    soundfile.write(tmp_path / "c.wav", np.stack([mono, mono], axis=1), 44100, subtype="FLOAT")
    write_mp4(tmp_path / "d.mp4", np.stack([mono, mono]), 44100)
    a, b, c, d = predictor.predict_files([tmp_path / n for n in ("a.wav", "b.flac", "c.wav", "d.mp4")])
    assert all(p.ok for p in (a, b, c, d)), [p.error for p in (a, b, c, d)]
    assert c.seconds == pytest.approx(2.0, abs=1e-3) and d.seconds == pytest.approx(2.0, abs=0.1)
    for other in (b, c, d):
        assert np.allclose(list(other.probabilities.values()), list(a.probabilities.values()), atol=0.02)
    noise = 0.1 * np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    other_clip = predictor.predict_wave(noise, 16000)
    assert not np.allclose(list(other_clip.probabilities.values()), list(a.probabilities.values()), atol=0.05)
    stereo = predictor.predict_wave(np.stack([mono, mono], axis=1), 44100)
    assert stereo.probabilities == pytest.approx(c.probabilities, abs=1e-4)


def test_long_clips_are_windowed_and_averaged_by_length(model_dir):
    predictor = Predictor.load(model_dir, device="cpu", window_seconds=2.0)
    wave = speechlike(5.0, seed=3)
    whole = predictor.predict_wave(wave, 16000)
    assert whole.windows == 3
    parts = [predictor.predict_wave(w, 16000) for w in (wave[:32000], wave[32000:64000], wave[64000:])]
    frames = np.array([len(predictor.extractor([w])[0]) for w in (wave[:32000], wave[32000:64000], wave[64000:])])
    expected = sum(f * np.array(list(p.probabilities.values())) for f, p in zip(frames, parts)) / frames.sum()
    assert np.allclose(list(whole.probabilities.values()), expected, atol=1e-6)
    assert predictor.predict_wave(speechlike(4.3), 16000).windows == 2  # a 0.3 s tail joins the last window


def test_windows_too_big_for_the_device_go_one_at_a_time_then_the_file_is_skipped(model_dir, tmp_path, monkeypatch,
                                                                                   caplog):
    """A long clip on a small GPU: its 8 windows a batch ran out of memory and ended `tfmamba predict` in a traceback.
    They now go one at a time, with the same prediction; a file whose single window does not fit is skipped with an
    error naming it and what to lower, and the next file is predicted (the model's forward raises the error CUDA
    raises for a batch of more windows than the device holds)."""
    from tfmamba.model import TFMamba

    predictor = Predictor.load(model_dir, device="cpu", window_seconds=2.0)
    wave = speechlike(5.0, seed=3)
    whole = predictor.predict_wave(wave, 16000)
    fits, forward = [8], TFMamba.forward

    def small_device(model, features, *args, **kwargs):
        if features.shape[0] > fits[0]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB.")
        return forward(model, features, *args, **kwargs)

    monkeypatch.setattr(TFMamba, "forward", small_device)
    fits[0] = 1
    with caplog.at_level("WARNING", logger="tfmamba.predict"):
        one_by_one = predictor.predict_wave(wave, 16000, name="long.wav")
    assert one_by_one.probabilities == pytest.approx(whole.probabilities, abs=1e-5)
    assert "long.wav: 3 windows of 2 s at once do not fit in cpu's memory (CUDA out of memory." in caplog.text

    fits[0] = 0
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, speechlike(1.5, seed=4), 16000)
    (skipped,) = predictor.predict_files([clip])
    assert not skipped.ok and skipped.error.startswith(f"{clip}: one 2 s window does not fit in cpu's memory (CUDA "
                                                       "out of memory. Tried to allocate 3.00 GiB.); lower "
                                                       "--window-seconds or predict with --device cpu")


def test_minutes_long_clip_gives_one_prediction(predictor):
    prediction = predictor.predict_wave(speechlike(125.0, 8000, seed=1), 8000, name="long")
    assert prediction.ok and prediction.windows == 5 and prediction.seconds == pytest.approx(125.0)


def test_find_audio_searches_folders_and_keeps_named_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.wav", "d/sub/y.MP3", "d/sub/z.m4a", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"1")
    found = find_audio([tmp_path / "d", tmp_path / "missing.wav"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d/sub/y.MP3", "d/sub/z.m4a", "d/x.wav",
                                                                    "missing.wav"]


def test_cli_prints_one_line_per_file_and_skips_bad_ones(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    soundfile.write(tmp_path / "good.wav", speechlike(1.2), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + b"\x13garbage" * 50)
    (tmp_path / "empty.flac").write_bytes(b"")
    args = ["predict", "good.wav", "corrupt.wav", "empty.flac", "gone.mp3", "--model", str(model_dir),
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 4
    path, label, probs = lines[0].split("\t")
    assert path == "good.wav" and label in LABELS and probs.startswith("neu 0.")
    assert lines[1].startswith("corrupt.wav\tERROR\t") and "undecodable" in lines[1]
    assert lines[2] == f"empty.flac\tERROR\tempty.flac: empty file (0 bytes)"
    assert lines[3] == "gone.mp3\tERROR\tgone.mp3: missing file"
    assert "1 of 4 files predicted, 3 skipped" in out.err
    assert not (tmp_path / "predictions.csv").exists()
    assert main(["predict", "corrupt.wav", "gone.mp3", "--model", str(model_dir)]) == 1
    assert "no file could be predicted" in capsys.readouterr().err


def test_cli_folder_writes_a_csv_without_overwriting(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clips = tmp_path / "clips" / "s1"
    clips.mkdir(parents=True)
    for i in range(3):
        soundfile.write(clips / f"c{i}.wav", speechlike(1.0 + i / 2, seed=i), 16000)
    write_mp4(clips / "c3.mp4", speechlike(1.0, 22050)[None, :], 22050)
    (clips / "bad.ogg").write_bytes(b"OggS" * 10)
    assert main(["predict", "clips", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("predictions written to predictions.csv") == 1
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text(encoding="utf-8").splitlines()))
    assert [Path(r["path"]).name for r in rows] == ["bad.ogg", "c0.wav", "c1.wav", "c2.wav", "c3.mp4"]
    assert rows[0]["label"] == "" and rows[0]["error"]
    for row in rows[1:]:
        probs = [float(row[f"prob_{label}"]) for label in LABELS]
        assert row["label"] == LABELS[int(np.argmax(probs))] and sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert main(["predict", "clips", "--model", str(model_dir), "--no-progress"]) == 0
    assert (tmp_path / "predictions-1.csv").exists()
    assert main(["predict", str(clips / "c0.wav"), "--model", str(model_dir), "--csv", "out/one.csv"]) == 0
    assert len(list(csv.DictReader((tmp_path / "out" / "one.csv").open()))) == 1



def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(model_dir, tmp_path):
    """`tfmamba predict clips/ | head -3`: the reader closing the pipe was `tfmamba predict: error: Broken pipe`, exit
    1. It now ends as piped Unix tools do (status 141 = 128 + SIGPIPE, nothing on stderr), and the CSV keeps the
    predictions made."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        soundfile.write(clips / f"c{i}.wav", speechlike(1.0, seed=i), 16000)
    for command in (["params"], ["predict", str(clips), "--model", str(model_dir), "--csv", str(tmp_path / "p.csv"),
                                 "--no-progress"]):
        done = subprocess.Popen([sys.executable, "-m", "tfmamba.cli", *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        done.stdout.close()  # the reader is gone before the first line
        err = done.stderr.read()
        assert done.wait(timeout=120) == 141, err
        assert not [line for line in err.splitlines() if " INFO " not in line], err
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) >= 1


def test_cli_interrupted_keeps_the_predictions_done_in_the_csv(model_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C over a folder (here on its third clip) still writes the CSV of the clips done, and exits 130."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    for i in range(4):
        soundfile.write(tmp_path / "clips" / f"c{i}.wav", speechlike(1.0, seed=i), 16000)
    predict_file = Predictor.predict_file

    def interrupted_on_c2(self, path):
        if Path(path).name == "c2.wav":
            raise KeyboardInterrupt
        return predict_file(self, path)

    monkeypatch.setattr(Predictor, "predict_file", interrupted_on_c2)
    try:
        code = main(["predict", "clips", "--model", str(model_dir), "--no-progress"])
    except KeyboardInterrupt:
        pytest.fail("the interruption escaped tfmamba predict, and the CSV with it")
    assert code == 130
    out = capsys.readouterr()
    assert "interrupted after 2 of 4 files" in out.err and "predictions written to predictions.csv" in out.out
    rows = list(csv.DictReader((tmp_path / "predictions.csv").read_text(encoding="utf-8").splitlines()))
    assert [Path(r["path"]).name for r in rows] == ["c0.wav", "c1.wav"] and all(r["label"] in LABELS for r in rows)


def test_cli_refuses_an_empty_audio_path_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """`tfmamba predict "$CLIP"` with CLIP unset must not predict every audio file under the current folder."""
    monkeypatch.chdir(tmp_path)
    soundfile.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    assert main(["predict", "a.wav", "", "--model", str(tmp_path / "no-model-here")]) == 2
    err = capsys.readouterr().err
    assert "audio path 2 of 2 is an empty string" in err and "no-model-here" not in err


def test_cli_refuses_folders_without_audio_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """A folder of the wrong files (or none) used to download and load the model, then say '0 of 0 files predicted'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    assert main(["predict", "empty", "notes", "--model", str(tmp_path / "no-model-here")]) == 2
    err = capsys.readouterr().err
    assert "tfmamba predict: error: no audio files in empty, notes (searched for .aac, .aif" in err
    assert "no-model-here" not in err


def test_cli_refuses_a_csv_it_cannot_write_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """`--csv` where no file can be made (here under a file; a read-only folder alike) used to predict every clip,
    then end in `No such file or directory: .../.preds.csv.tmp-1426`, status 1."""
    monkeypatch.chdir(tmp_path)
    soundfile.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert main(["predict", "a.wav", "--csv", "notes.txt/preds.csv", "--model", str(tmp_path / "no-model-here")]) == 2
    err = capsys.readouterr().err
    assert "tfmamba predict: error: notes.txt/preds.csv: cannot write the predictions there (" in err, err
    assert "give another place with --csv" in err and "no-model-here" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "notes.txt"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "model format version 2 .*reads version 1"),
        (lambda d: d.pop("format_version"), "model format version None"),
        (lambda d: d["feature"].update(dim=1024), "takes 80-dim input but its feature spec .* gives 1024"),
        (lambda d: d["labels"].pop(), "4 classes but 3 labels"),
        (lambda d: d.pop("feature"), r"missing \['feature'\]"),
        (lambda d: d["feature"].update(frame_rate=50.0), "runs at 100.0 frames/s, the model was trained at 50.0"),
    ],
)
def test_tampered_model_json_is_a_clear_error(model_dir, tmp_path, edit, message):
    folder = tamper(Path(shutil.copytree(model_dir, tmp_path / "m")), edit)
    with pytest.raises(DataError, match=message):
        Predictor.load(folder, device="cpu")


def test_extractor_dim_differs_from_the_model(tmp_path):
    """model.json consistent in itself (1024-dim) but naming fbank, which gives 80."""
    torch.manual_seed(0)
    config = ModelConfig(input_dim=1024, num_classes=4, **TINY)
    folder = write_model_folder(tmp_path / "m")
    save_weights({k: v.contiguous() for k, v in TFMamba(config).state_dict().items()}, folder / "model.safetensors")
    tamper(folder, lambda d: (d["model"].update(input_dim=1024), d["feature"].update(dim=1024)))
    with pytest.raises(DataError, match="extractor 'fbank' gives 80-dim features but the model takes 1024"):
        Predictor.load(folder, device="cpu")


def test_an_encoder_folder_this_machine_lacks_can_be_given_again(model_dir, tmp_path, capsys):
    """A model trained on a cluster's local copy of an encoder, predicted elsewhere: model.json names a folder
    that is not here. The error says how to give a copy; `--extractor` gives it (fbank stands in for the copy)."""
    missing = str(tmp_path / "cluster" / "wavlm-large")
    folder = tamper(Path(shutil.copytree(model_dir, tmp_path / "m")), lambda d: d["feature"].update(extractor=missing))
    with pytest.raises(DataError, match=f"speech encoder in {missing}, a folder this machine does not have; give a "
                                        f"copy .* with `tfmamba predict --extractor`"):
        Predictor.load(folder, device="cpu")
    clip = tmp_path / "c.wav"
    soundfile.write(clip, speechlike(2.0), 16000)
    out = tmp_path / "p.csv"
    assert main(["predict", str(clip), "--model", str(folder), "--extractor", "fbank", "--csv", str(out)]) == 0
    expected = Predictor.load(model_dir, device="cpu").predict_file(clip)
    (row,) = csv.DictReader(out.open())
    assert row["label"] == expected.label and float(row["prob_neu"]) == pytest.approx(expected.probabilities["neu"], abs=1e-6)


def test_missing_or_broken_model_folders(model_dir, tmp_path, capsys):
    with pytest.raises(DataError, match="no such model folder"):
        Predictor.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no model.json \(not a trainer output folder\)"):
        Predictor.load(tmp_path / "empty")
    shutil.copytree(model_dir, tmp_path / "runs/fold-1")
    with pytest.raises(DataError, match="it holds trainer output folders; load one of them: .*runs/fold-1\\)$"):
        Predictor.load(tmp_path / "runs")
    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="unreadable weights"):
        Predictor.load(broken)
    assert main(["predict", "x.wav", "--model", str(tmp_path / "empty")]) == 2
    assert "tfmamba predict: error:" in capsys.readouterr().err


def test_mlflow_uris_need_mlflow_only_when_used(model_dir, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert Predictor.load(model_dir, device="cpu").labels == LABELS
    with pytest.raises(ConfigError, match="MLflow and artifact URIs need the mlflow package"):
        Predictor.load("runs:/0123/model")


def test_an_artifact_uri_as_the_mlflow_ui_shows_it_loads_without_a_tracking_store(model_dir, tmp_path, monkeypatch):
    """A model's location copied from the MLflow UI (`file://`, `s3://`, `mlflow-artifacts:/`) is downloaded by
    MLflow's artifact repositories; it used to be taken for a folder path (`s3:/bucket/x: no such model folder`). No
    tracking store is opened for it: MLflow's default one would be a new ./mlflow.db."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    wave = speechlike(1.0, seed=2)
    reference = Predictor.load(model_dir, device="cpu").predict_wave(wave, 16000)
    loaded = Predictor.load(model_dir.as_uri(), device="cpu")
    assert loaded.predict_wave(wave, 16000).probabilities == pytest.approx(reference.probabilities, abs=1e-6)
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(DataError, match=r"^weird://x/y: could not download the model \(Could not find a registered "
                                        r"artifact repository"):
        Predictor.load("weird://x/y")
    with pytest.raises(DataError, match=r"^file:///nowhere/model: could not download the model \(.*\)$"):
        Predictor.load("file:///nowhere/model")


def test_a_down_tracking_server_is_reported_in_seconds(tmp_path):
    """`tfmamba predict --model models:/... --tracking-uri http://<down>`: exit 2 naming the server, after MLflow's
    HTTP retries bounded for a person waiting (its defaults took 4 minutes; the limit is a minute)."""
    from servers import free_port

    clip = tmp_path / "a.wav"
    soundfile.write(clip, speechlike(1.0), 16000)
    down = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "tfmamba.cli", "predict", str(clip), "--model", "models:/ser/1",
                           "--tracking-uri", down], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert done.returncode == 2
    assert f"models:/ser/1: could not download the model from MLflow (API request to {down}/" in done.stderr


def test_the_pyfunc_model_class_is_defined_without_a_warning():
    """MLflow warns of a `predict` without type hints when the class is defined, under a warning filter of its own
    that the module's filters cannot override; every sweep printed it before the class opted out."""
    done = subprocess.run([sys.executable, "-W", "default", "-c", "import orchestration.model_export"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "type hints" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_run_without_a_model_points_at_the_runs_that_have_one(model_dir, tmp_path):
    """`runs:/<sweep or trial run>/model`, picked in the MLflow UI: MLflow's "Failed to download artifacts from path
    'model'" alone left the user to find which runs log a model."""
    from mlflow.tracking import MlflowClient

    logged = log_model(tmp_path, model_dir, "near", registered_name=None)
    client = MlflowClient(logged.uri)
    experiment_id = client.get_experiment_by_name("near").experiment_id
    sweep = client.create_run(experiment_id, tags={"best_model_uri": logged.model_uri}).info.run_id
    trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": sweep}).info.run_id
    fold = client.create_run(experiment_id, tags={"mlflow.parentRunId": trial}, run_name="t01-fold1").info.run_id
    for name in ("model.safetensors", "model.json"):
        client.log_artifact(fold, str(model_dir / name), artifact_path="model")
    with pytest.raises(DataError) as caught:
        Predictor.load(f"runs:/{sweep}/model", tracking_uri=logged.uri)
    assert str(caught.value).endswith(f"; run {sweep} logs no model; its best model is {logged.model_uri}")
    with pytest.raises(DataError) as caught:
        Predictor.load(f"runs:/{trial}/model", tracking_uri=logged.uri)
    assert str(caught.value).endswith(f"; run {trial} logs no model; its run t01-fold1 does: runs:/{fold}/model")
    loaded = Predictor.load(f"runs:/{fold}/model", device="cpu", tracking_uri=logged.uri)
    assert loaded.labels == Predictor.load(model_dir, device="cpu").labels


def test_mlflow_run_artifacts_pyfunc_and_registered_model(model_dir, tmp_path, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    logged = log_model(tmp_path, model_dir, "predict", registered_name="tfmamba-ser")
    uri, model_uri = logged.uri, logged.model_uri
    client = MlflowClient(uri)
    (registered,) = client.search_model_versions("name='tfmamba-ser'")
    version = registered.version
    client.set_registered_model_alias("tfmamba-ser", "champion", version)
    wave = speechlike(1.5, seed=4)
    reference = Predictor.load(model_dir, device="cpu").predict_wave(wave, 16000)
    # MLflow's own URI points elsewhere (as in a fresh process: ./mlflow.db): `tracking_uri` alone must find the
    # runs, the logged model and the registry, create no other store and leave MLflow's URI as it was.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    mlflow.set_tracking_uri(elsewhere)
    for ref in (f"runs:/{logged.fold_run_id}/model", f"runs:/{logged.trial_run_id}/model", model_uri,
                f"models:/tfmamba-ser/{version}", "models:/tfmamba-ser@champion"):
        loaded = Predictor.load(ref, device="cpu", tracking_uri=uri)
        assert loaded.predict_wave(wave, 16000).probabilities == pytest.approx(reference.probabilities, abs=1e-6)
    assert not (tmp_path / "elsewhere").exists() and mlflow.get_tracking_uri() == elsewhere
    with pytest.raises(DataError, match="could not download"):
        Predictor.load(f"runs:/{logged.fold_run_id}/nothing-here", tracking_uri=uri)
    with pytest.raises(DataError, match=r"models:/tfmamba-ser/1: no MLflow store at .*/nowhere\.db \(give --tracking"):
        Predictor.load("models:/tfmamba-ser/1", tracking_uri=f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert not (tmp_path / "nowhere.db").exists()
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, wave, 16000)
    environment = dict(os.environ)
    capsys.readouterr()
    assert main(["predict", str(clip), "--model", "models:/tfmamba-ser@champion", "--tracking-uri", uri,
                 "--no-progress"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"{clip}\t{reference.label}\t") and "Downloading artifacts" not in out.err
    assert dict(os.environ) == environment  # its MLflow HTTP and progress settings were for the download only
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/tfmamba-ser/{version}")
    features = Predictor.load(model_dir, device="cpu").extractor([wave])[0]
    frame = served.predict([features])
    assert frame.loc[0, "label"] == reference.label
    assert [frame.loc[0, f"prob_{label}"] for label in LABELS] == pytest.approx(
        [reference.probabilities[label] for label in LABELS], abs=1e-5)
    by_path = served.predict([str(clip), str(tmp_path / "missing.wav")])
    from_file = Predictor.load(model_dir, device="cpu").predict_file(clip)
    assert by_path.loc[0, "label"] == from_file.label and by_path.loc[0, "error"] == ""
    assert [by_path.loc[0, f"prob_{label}"] for label in LABELS] == pytest.approx(
        [from_file.probabilities[label] for label in LABELS], abs=1e-5)
    assert "missing file" in by_path.loc[1, "error"]
    from mlflow.exceptions import MlflowException

    for bad, why in (([np.full((5, 80), np.nan, np.float32)], r"item 0 holds NaN or Inf"),  # gave NaN scores
                     ([features, features[:, :40]], r"item 1 has shape \(\d+, 40\)"),  # torch's "mat1 and mat2 ..."
                     ([features, str(clip)], "the input mixes audio paths with features")):
        with pytest.raises(MlflowException, match=f"^tfmamba: {why}; this model takes \\(frames, 80\\) float "
                                                  "features of fbank, or audio paths$"):
            served.predict(bad)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """A small model trained for 3 epochs on fold 1 of the demo corpus, with the fold and its manifest."""
    from tfmamba.config import load_train_config
    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.demo import ensure_demo_data
    from tfmamba.features.store import FeatureStore
    from tfmamba.corpora.folds import load_folds
    from tfmamba.training.fold import train_fold

    torch.set_num_threads(1)
    demo = ensure_demo_data(DEMO_ROOT, progress=False)
    manifest = read_manifest(demo.manifest_dir)
    fold = load_folds(manifest.path.parent, manifest)[0]
    store = FeatureStore.open(str(demo.cache), manifest=manifest)
    config = load_train_config("demo").replace(
        d_model=32, d_state=8, headdim=8, num_heads=2, ffn_dim=32, classifier_dims=[32], chunk_size=32, epochs=3,
        max_frames=100, lr=3e-3, warmup_epochs=0.5, patience=0, ssd_backend="torch", amp=False)
    out = tmp_path_factory.mktemp("demo") / "fold-1"
    result = train_fold(config, fold, store, manifest=manifest, out_dir=out, device="cpu", progress=False)
    return out, fold, manifest, result


@pytest.mark.slow
def test_demo_model_predicts_held_out_clips_well_above_chance(demo_model, capsys):
    from tfmamba.metrics import compute_metrics

    out, fold, manifest, result = demo_model
    table = manifest.table.set_index("utt_id").loc[fold.test]
    predictions = Predictor.load(out, device="cpu").predict_files(table.path)
    assert all(p.ok for p in predictions)
    truth = [manifest.label_index(label) for label in table.label]
    predicted = [manifest.label_index(p.label) for p in predictions]
    metrics = compute_metrics(truth, predicted, manifest.labels)
    assert metrics.ua > 0.4, (metrics.ua, result.test)
    assert main(["predict", *table.path[:3], "--model", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == list(table.path[:3])
