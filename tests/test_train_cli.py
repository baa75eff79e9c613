"""`tfmamba train` end to end on a tiny manifest, folds file and feature cache written to disk."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tfmamba.cli import main
from tfmamba.training import fold as fold_module
from tfmamba.corpora.folds import Fold, save_folds
from tfmamba.corpora.manifest import manifest_hash, write_manifest
from tfmamba.features.writer import FeatureWriter


def make_corpus(folder) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    labels = ["neu", "ang"]
    rows, frames = [], {}
    for i in range(24):
        label = labels[i % 2]
        utt = f"u{i:02d}"
        rows.append({"utt_id": utt, "path": f"/corpus/{utt}.wav", "label": label, "speaker": f"s{i % 3}",
                     "duration": 0.3, "session": 1 + i % 3})
        frames[utt] = (rng.normal(size=(30, 6)) + (2.0 if label == "ang" else 0.0)).astype(np.float32)
    manifest = write_manifest(pd.DataFrame(rows), folder / "m", "toy", labels)
    ids = sorted(frames)
    save_folds([Fold(1, "toy", train=ids[:16], valid=ids[16:20], test=ids[20:])], folder / "m", manifest)
    identity = {"extractor": "fbank", "revision": "test", "layer": None, "dim": 6, "frame_rate": 100.0,
                "sample_rate": 16000}
    with FeatureWriter(str(folder / "cache"), identity, manifest_hash(manifest)) as writer:
        for utt in ids:
            writer.add(utt, frames[utt])
    return str(folder / "m"), str(folder / "cache")


def tiny_train_args(manifest: str, cache: str, out, epochs: int) -> list[str]:
    """`tfmamba train` of fold 1 with a tiny model, so that a test's fold trains in about a second."""
    return ["train", "--manifest", manifest, "--cache", cache, "--fold", "1", "--config", "demo", "--out", str(out),
            "--no-progress", "--set", "d_model=16", "--set", "d_state=8", "--set", "headdim=8", "--set",
            "num_heads=2", "--set", "ffn_dim=16", "--set", "classifier_dims=[8]", "--set", f"epochs={epochs}",
            "--set", "batch_size=8", "--set", "ssd_backend=torch"]


@pytest.mark.slow
def test_train_command_writes_the_results_folder_and_resumes(tmp_path, capsys):
    manifest, cache = make_corpus(tmp_path)
    out = tmp_path / "run"
    args = tiny_train_args(manifest, cache, out, epochs=2)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fold 1: best epoch" in printed and f"results in {out}" in printed and "test   WA" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs_run"] == 2 and metrics["labels"] == ["neu", "ang"]
    assert (out / "confusion.png").stat().st_size > 0 and (out / "train_config.yaml").read_text().count("d_model: 16")

    assert main(args) == 0  # everything trained already: resumes at the end, same result
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]

    assert main([*args, "--set", "lr=0.5"]) == 2
    assert "other settings (lr)" in capsys.readouterr().err
    assert main([*args[:6], "3", *args[7:]]) == 2
    assert "no fold 3" in capsys.readouterr().err
    assert main([*args, "--set", "bogus=1"]) == 2
    assert "unknown setting(s): bogus" in capsys.readouterr().err


def cache_without(folder, manifest: str, skipped: dict[str, str], unexplained: tuple[str, ...] = ()) -> str:
    """A copy of make_corpus's cache lacking `skipped` (listed in its problems.csv with the reason, as `tfmamba
    features` lists a clip it could not decode) and `unexplained` (not listed)."""
    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.features.store import FeatureStore

    full = FeatureStore.open(str(folder / "cache"))
    cache = folder / f"cache-{len(skipped)}-{len(unexplained)}"
    with FeatureWriter(str(cache), {k: full.metadata[k] for k in ("extractor", "revision", "layer", "dim",
                                                                   "frame_rate", "sample_rate")},
                       manifest_hash(read_manifest(manifest))) as writer:
        for utt in full.utt_ids:
            if utt not in skipped and utt not in unexplained:
                writer.add(utt, full.get(utt).astype(np.float32))
        writer.write_problems([{"utt_id": u, "path": f"/corpus/{u}.wav", "reason": r} for u, r in skipped.items()])
    return str(cache)


def test_utterances_the_cache_skipped_are_left_out_and_any_other_gap_is_named(tmp_path, capsys):
    """A clip `tfmamba features` could not decode (listed in its problems.csv) stopped every fold that held it: no
    fold of a corpus with one bad clip could train. Such clips are now left out, counted in the summary and in
    metrics.json; an utterance missing for no recorded reason (an unfinished build) is still an error."""
    manifest, _ = make_corpus(tmp_path)
    undecodable = "undecodable (Invalid data found when processing input)"
    cache = cache_without(tmp_path, manifest, {"u01": undecodable, "u17": undecodable, "u21": undecodable})
    out = tmp_path / "run"
    assert main(tiny_train_args(manifest, cache, out, epochs=1)) == 0
    assert ("left out: 1 train, 1 valid, 1 test utterances the feature cache's build skipped (its problems.csv "
            "says why)") in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_when_built"] == {"train": 1, "valid": 1, "test": 1}
    assert sum(map(sum, metrics["test_confusion"])) == 3  # u20, u22, u23
    from orchestration.mlflow_runs import fold_summary_metrics  # what a sweep's fold run logs

    logged = fold_summary_metrics(metrics)
    assert [logged[f"skipped_{part}_utterances"] for part in ("train", "valid", "test")] == [1, 1, 1]

    gap = cache_without(tmp_path, manifest, {"u01": undecodable}, unexplained=("u21",))
    assert main(tiny_train_args(manifest, gap, tmp_path / "gap", epochs=1)) == 2
    assert (f"fold 1: 1 utterances are not in feature cache {gap}, and its problems.csv does not say why: ['u21'] "
            "(a cache of another manifest, or a build that has not finished") in capsys.readouterr().err
    no_test = cache_without(tmp_path, manifest, {u: undecodable for u in ("u20", "u21", "u22", "u23")})
    assert main(tiny_train_args(manifest, no_test, tmp_path / "no-test", epochs=1)) == 2
    assert (f"fold 1 (toy): every one of its 4 test utterances was skipped when feature cache {no_test} was built"
            in capsys.readouterr().err)


def test_an_interrupted_training_says_what_it_keeps_and_the_same_command_goes_on(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or a job scheduler's SIGINT) used to end `tfmamba train` in a KeyboardInterrupt traceback. It ends in
    one line saying which checkpoint is kept, exit status 130, and the same command then finishes the fold from it.
    The interruption is raised where SIGINT lands: inside an epoch's training."""
    manifest, cache = make_corpus(tmp_path)
    out = tmp_path / "run"
    args = tiny_train_args(manifest, cache, out, epochs=3)
    train_epoch, epochs_started = fold_module.train_epoch, []

    def interrupted_in_epoch(epoch: int):
        def step(*a, **k):
            epochs_started.append(a[7])
            if a[7] == epoch:
                raise KeyboardInterrupt
            return train_epoch(*a, **k)
        return step

    monkeypatch.setattr(fold_module, "train_epoch", interrupted_in_epoch(1))
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.endswith("tfmamba train: interrupted; no epoch had finished, so the same command starts from the "
                        "beginning\n") and "Traceback" not in err, err
    monkeypatch.setattr(fold_module, "train_epoch", interrupted_in_epoch(2))
    assert main(args) == 130
    assert capsys.readouterr().err.endswith(f"tfmamba train: interrupted; the checkpoint of epoch 1 is kept in "
                                            f"{out}/checkpoints/last, and the same command goes on from it\n")
    epochs_started.clear()
    monkeypatch.setattr(fold_module, "train_epoch", interrupted_in_epoch(0))
    assert main(args) == 0
    assert epochs_started == [2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3


def test_sigterm_stops_training_as_ctrl_c_does(tmp_path):
    """A batch job's time limit sends SIGTERM: `tfmamba train` used to end at once and silently (status -15). It
    ends with the interrupted line naming the checkpoint the same command resumes from, status 130."""
    manifest, cache = make_corpus(tmp_path)
    out = tmp_path / "run"
    train = subprocess.Popen([sys.executable, "-m", "tfmamba.cli", *tiny_train_args(manifest, cache, out, epochs=500)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints/last/progress.json").is_file():
            assert train.poll() is None and time.monotonic() < deadline, train.communicate()[1][-3000:]
            time.sleep(0.1)
        train.send_signal(signal.SIGTERM)
        _, err = train.communicate(timeout=60)
    finally:
        train.kill()
    assert train.returncode == 130, err[-3000:]
    assert re.search(rf"tfmamba train: interrupted; the checkpoint of epoch \d+ is kept in {re.escape(str(out))}/"
                     r"checkpoints/last, and the same command goes on from it\n$", err), err[-3000:]


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """`--out` where nothing can be written (here under a file; /proc/x alike) used to train a whole epoch, then fail
    at its checkpoint."""
    manifest, cache = make_corpus(tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "run"
    assert main(tiny_train_args(manifest, cache, out, epochs=1)) == 2
    err = capsys.readouterr().err
    assert f"tfmamba train: error: {out}: cannot write the fold's results there (" in err, err
    assert "epoch" not in err


def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path, capsys):
    """Two `tfmamba train` runs into one --out would overwrite each other's checkpoints: the second stops before it
    trains, naming the first (here a process holding the folder's lock as a training run does)."""
    manifest, cache = make_corpus(tmp_path)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tfmamba.process_lock import acquire\n"
                              "lock = acquire(sys.argv[1], 'train')\nprint('held', flush=True)\ntime.sleep(60)",
                              str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        assert main(["train", "--manifest", manifest, "--cache", cache, "--out", str(out), "--no-progress"]) == 2
        assert f"{out} is being trained into by another process (pid {first.pid} on " in capsys.readouterr().err
        assert not (out / "checkpoints").exists()
    finally:
        first.kill()
        first.wait()


def test_a_full_disk_stops_training_with_a_clear_error(tmp_path, capsys, small_disks):
    """No room for the first checkpoint: `tfmamba train` used to end in a safetensors traceback and leave the partial
    temporary folder behind. It names the folder, the epoch and the reason, and removes the partial files; once there
    is room the same command trains the fold."""
    manifest, cache = make_corpus(tmp_path)
    disk = small_disks.mount(1)
    out = disk / "run"
    args = tiny_train_args(manifest, cache, out, epochs=1)
    filler = small_disks.fill(disk, leave=16 * 1024)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (f"tfmamba train: error: {out}/checkpoints/last: cannot write the checkpoint of epoch 1 (No space left on "
            "device); there is no earlier one, so a rerun starts from the beginning") in err, err
    assert [p.name for p in (out / "checkpoints").iterdir()] == []

    filler.unlink()
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("device, message", [("cuda:99", ("has no CUDA", "no CUDA GPU is visible", "numbered from 0")),
                                             ("gpu", ("not a torch device",))])
def test_a_device_this_machine_lacks_is_refused_as_the_option_is_read(tmp_path, capsys, device, message):
    """`--device cuda` on a CPU-only torch used to fail inside training with torch's "Torch not compiled with CUDA
    enabled" traceback, after the output folder was made (`tfmamba features` with fbank ignored it)."""
    for command in (["train", "--out", str(tmp_path / "run")], ["features", "--manifest", "m", "--out", "c"],
                    ["predict", "clip.wav", "--model", "m"]):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--device", device])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"tfmamba {command[0]}: error: argument --device: " in err and any(m in err for m in message), err
    assert not (tmp_path / "run").exists()
