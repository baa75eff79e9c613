"""The registered model: explicit names, the `champion` alias and its tags, and `mlflow models serve` answering a
REST request with audio paths (a real server in a subprocess, on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile

from logged_model import log_model
from servers import free_port
from test_predict import LABELS, speechlike, write_model_folder
from orchestration.registry import CHAMPION, check_name, register


def test_register_names_are_checked() -> None:
    assert check_name("tfmamba-demo") == "tfmamba-demo"
    for bad in ("", "a b", "x/y", "-lead", "n" * 129):
        with pytest.raises(ValueError, match="--register"):
            check_name(bad)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny fbank model logged as the pyfunc model of a trial run in a fresh SQLite MLflow (no registration)."""
    root = tmp_path_factory.mktemp("registry")
    logged = log_model(root, write_model_folder(root / "fold-1"), "registry", registered_name=None)
    return root, logged.uri, logged.model_uri


@pytest.mark.slow
def test_champion_moves_only_to_a_better_version(logged) -> None:
    from mlflow.tracking import MlflowClient

    root, uri, model_uri = logged
    client = MlflowClient(uri)
    assert client.search_registered_models() == []  # logging alone registers nothing
    tags = {"sweep": "s1", "trial": "t1", "corpus": "demo", "feature_extractor": "fbank"}
    first = register(uri, model_uri, "ser-a", tags, "valid_ua_mean", "max", 0.50)
    worse = register(uri, model_uri, "ser-a", {**tags, "sweep": "s2"}, "valid_ua_mean", "max", 0.40)
    better = register(uri, model_uri, "ser-a", {**tags, "sweep": "s3"}, "valid_ua_mean", "max", 0.60)
    assert (first.champion, worse.champion, better.champion) == (True, False, True)
    champion = client.get_model_version_by_alias("ser-a", CHAMPION)
    assert str(champion.version) == better.version
    expected = {"sweep": "s3", "trial": "t1", "corpus": "demo", "feature_extractor": "fbank",
                "objective": "valid_ua_mean (max)", "objective_value": "0.6"}
    assert {k: champion.tags.get(k) for k in expected} == expected
    lower = register(uri, model_uri, "ser-loss", tags, "valid_loss_mean", "min", 1.2)
    lowest = register(uri, model_uri, "ser-loss", tags, "valid_loss_mean", "min", 0.9)
    assert lower.champion and lowest.champion
    # The same best trial found again (a rerun of the demo) ties: the champion stays, whatever its value's digits.
    held = register(uri, model_uri, "ser-tie", tags, "valid_ua_mean", "max", 0.53321049)
    again = register(uri, model_uri, "ser-tie", {**tags, "sweep": "s2"}, "valid_ua_mean", "max", 0.53321049)
    assert held.champion and not again.champion
    assert str(client.get_model_version_by_alias("ser-tie", CHAMPION).version) == held.version
    info = client.get_model_version("ser-a", first.version)
    assert info.source and "valid_ua_mean = 0.5000" in info.description


@pytest.mark.slow
def test_mlflow_models_serve_answers_audio_paths(logged, tmp_path: Path) -> None:
    import mlflow

    _, uri, model_uri = logged
    reg = register(uri, model_uri, "ser-served", {"sweep": "s"}, "valid_ua_mean", "max", 0.5)
    assert reg.champion
    mlflow.set_tracking_uri(uri)
    signature = mlflow.models.get_model_info(f"models:/ser-served@{CHAMPION}").signature
    assert [c.name for c in signature.outputs.inputs] == ["path", "label", *[f"prob_{x}" for x in LABELS], "error"]
    packaged = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    assert (packaged / "code" / "tfmamba" / "predict.py").is_file()  # the code travels; no index serves it
    assert "tfmamba-sweeps" not in (packaged / "requirements.txt").read_text()
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, speechlike(1.5), 16000)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # as in an active venv
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/ser-served@{CHAMPION}",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
            time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["path"],
                                               "data": [[str(clip)], [str(tmp_path / "missing.wav")]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        wrong = json.dumps({"inputs": [[[0.5] * 7] * 3]})  # features of 7 dims; the model takes fbank's 80
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=wrong.encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=120)
        assert refused.value.code == 400  # it used to say only "Encountered an unexpected error ..."
        assert ("tfmamba: item 0 has shape (3, 7); this model takes (frames, 80) float features of fbank, or audio "
                "paths") in json.loads(refused.value.read())["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert [p["path"] for p in predictions] == [str(clip), str(tmp_path / "missing.wav")]
    assert predictions[0]["label"] in LABELS and predictions[0]["error"] == ""
    assert sum(predictions[0][f"prob_{x}"] for x in LABELS) == pytest.approx(1.0, abs=1e-4)
    assert "missing file" in predictions[1]["error"]
