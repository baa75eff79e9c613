"""The fold trainer on a tiny synthetic feature store: outputs, determinism, resume, NaN handling, gather path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist

from tfmamba.checkpoint import has_checkpoint, load_checkpoint
from tfmamba.config import TrainConfig
from tfmamba.corpora.manifest import Manifest
from tfmamba.errors import ConfigError, TrainingError
from tfmamba.features.store import FeatureStore
from tfmamba.folds import Fold
from tfmamba.train import FoldResult, load_trained_model, train_fold
from tfmamba.training.data import InputNorm, fold_into_linear

LABELS = ["neu", "hap", "ang", "sad"]
DIM = 8
TINY = dict(d_model=16, d_state=8, headdim=8, num_heads=2, ffn_dim=16, classifier_dims=[16], chunk_size=16,
            batch_size=8, epochs=2, max_frames=24, lr=3e-3, warmup_epochs=0.5, patience=0, input_norm="global",
            ssd_backend="torch")


def tiny_config(**overrides) -> TrainConfig:
    return TrainConfig().replace(**{**TINY, **overrides})


def synthetic(n_per_class: int = 10, seed: int = 0, poison: str | None = None
              ) -> tuple[FeatureStore, Manifest, Fold]:
    """A learnable toy corpus: each class shifts a different feature dimension; raw scale ~ log-mels."""
    rng = np.random.default_rng(seed)
    rows, frames = [], []
    for c, label in enumerate(LABELS):
        for i in range(n_per_class):
            length = int(rng.integers(12, 40))
            x = rng.normal(-5.0, 2.0, size=(length, DIM))
            x[:, c] += 3.0
            frames.append(x.astype(np.float16))
            rows.append({"utt_id": f"{label}{i:02d}", "label": label, "speaker": f"s{i % 3}", "session": 1,
                         "path": f"/x/{label}{i}.wav", "duration": length / 100})
    if poison is not None:
        frames[0][:, 2] = np.float16(poison)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    ids = [r["utt_id"] for r in rows]
    meta = {"extractor": "synthetic", "revision": "1", "layer": None, "dim": DIM, "frame_rate": 100.0}
    store = FeatureStore(np.concatenate(frames), offsets, ids, meta, uri="memory://synthetic")
    manifest = Manifest(table=pd.DataFrame(rows), corpus="toy", labels=list(LABELS))
    by_role = {"train": [], "valid": [], "test": []}
    for k, utt in enumerate(ids):
        by_role[("train", "train", "valid", "test", "train")[k % 5]].append(utt)
    return store, manifest, Fold(index=1, name="toy", **by_role)


class Recorder:
    """A Reporter that remembers what it was told, optionally raising after some epoch (an interruption)."""

    def __init__(self, stop_after: int | None = None, resume: Path | None = None) -> None:
        self.calls: list[tuple[dict, Path | None]] = []
        self.stop_after = stop_after
        self.resume = resume

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.calls.append((dict(metrics), checkpoint_dir))
        if self.stop_after is not None and metrics.get("epoch") == self.stop_after and "done" not in metrics:
            raise KeyboardInterrupt("simulated kill")

    def resume_dir(self) -> Path | None:
        return self.resume


def run(tmp_path: Path, name: str, config: TrainConfig, reporter=None, data=None) -> FoldResult:
    store, manifest, fold = data or synthetic()
    return train_fold(config, fold, store, reporter, manifest=manifest, out_dir=tmp_path / name, progress=False)


def comparable(result: FoldResult) -> dict:
    d = result.to_dict()
    for key in ("out_dir", "train_seconds"):
        d.pop(key)
    return d


def test_outputs_reports_and_the_saved_model(tmp_path):
    torch.set_num_threads(1)
    recorder = Recorder()
    result = run(tmp_path, "out", tiny_config(epochs=3), recorder)
    out = tmp_path / "out"
    assert result.status == "ok" and result.epochs_run == 3 and 1 <= result.best_epoch <= 3
    for name in ("model.safetensors", "model.json", "train_config.yaml", "metrics.json", "history.csv",
                 "confusion.png"):
        assert (out / name).is_file(), name
    assert has_checkpoint(out / "checkpoints/last")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["test"] == result.test and len(metrics["history"]) == 3
    assert sum(map(sum, result.test_confusion)) == len(synthetic()[2].test)

    epochs, final = recorder.calls[:-1], recorder.calls[-1]
    assert [m["epoch"] for m, _ in epochs] == [1, 2, 3]
    expected = {"epoch", "train_loss", "train_ce", "train_cmdt", "valid_loss", "valid_wa", "valid_ua", "valid_wf1",
                "best_valid_ua", "lr"}
    assert all(set(m) == expected and folder == out / "checkpoints/last" for m, folder in epochs)
    assert all(m["train_cmdt"] > 0 for m, _ in epochs)
    assert final[0]["done"] == 1 and final[0]["best_epoch"] == result.best_epoch and final[1] is None
    assert final[0]["test_ua"] == result.test["ua"]
    best_row = result.history[result.best_epoch - 1]
    assert result.valid["ua"] == best_row["valid_ua"] == max(r["valid_ua"] for r in result.history)

    model, description = load_trained_model(out)
    assert description["labels"] == LABELS and description["feature"]["dim"] == DIM
    assert description["input_norm"]["mode"] == "global"
    store, manifest, fold = synthetic()
    raw = [torch.from_numpy(store.get(u).astype(np.float32)) for u in fold.test]
    centre = [x[max(0, (len(x) - 24) // 2):][:24] for x in raw]  # the trainer's evaluation crop
    with torch.no_grad():
        predicted = [int(model(x[None], torch.tensor([len(x)])).logits.argmax()) for x in centre]
    ua = np.mean([np.mean([p == c for p, u in zip(predicted, fold.test) if u.startswith(label)])
                  for c, label in enumerate(LABELS)])
    assert ua == pytest.approx(result.test["ua"])  # the folded weights on raw features reproduce the test


def test_folding_the_input_norm_is_exact():
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    norm = InputNorm(torch.randn(5), torch.rand(5) + 0.5)
    folded = torch.nn.Linear(5, 3)
    folded.load_state_dict(fold_into_linear(linear, norm))
    x = torch.randn(4, 5)
    torch.testing.assert_close(folded(x), linear(norm(x)))


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    torch.set_num_threads(1)
    first = run(tmp_path, "a", tiny_config())
    second = run(tmp_path, "b", tiny_config())
    other = run(tmp_path, "c", tiny_config(seed=1))
    assert comparable(first) == comparable(second)
    assert first.history != other.history


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    config = tiny_config(epochs=4, dropout=0.2)
    whole = run(tmp_path, "whole", config)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", config, Recorder(stop_after=2))
    _, _, _, progress = load_checkpoint(tmp_path / "cut/checkpoints/last")
    assert progress["epoch"] == 2 and not (tmp_path / "cut/metrics.json").exists()
    recorder = Recorder()
    resumed = run(tmp_path, "cut", config, recorder)
    assert [m["epoch"] for m, _ in recorder.calls[:-1]] == [3, 4]
    assert comparable(resumed) == comparable(whole)

    # A reporter's resume folder (Ray's checkpoint) works the same from an empty output folder.
    from_reporter = run(tmp_path, "elsewhere", config, Recorder(resume=tmp_path / "whole/checkpoints/last"))
    assert comparable(from_reporter) == comparable(whole)


def test_resume_refuses_other_settings(tmp_path):
    torch.set_num_threads(1)
    run(tmp_path, "out", tiny_config(epochs=1))
    with pytest.raises(ConfigError, match="lr"):
        run(tmp_path, "out", tiny_config(epochs=2, lr=1e-2))


@pytest.mark.parametrize(("overrides", "poison"), [({"lr": 1e30}, None), ({"input_norm": "none"}, "inf")])
def test_non_finite_loss_fails_the_fold_with_its_epoch(tmp_path, overrides, poison):
    torch.set_num_threads(1)
    recorder = Recorder()
    config = tiny_config(epochs=3, grad_clip=None, **overrides)
    with pytest.raises(TrainingError, match=r"fold 1 \(toy\), epoch \d+, step \d+: the training loss is not finite"):
        run(tmp_path, "out", config, recorder, data=synthetic(poison=poison))
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["status"] == "failed" and "not finite" in metrics["error"]
    assert recorder.calls[-1][0]["failed"] == 1 and recorder.calls[-1][1] is None


def test_gather_path_with_a_one_process_group_matches_plain_training(tmp_path):
    torch.set_num_threads(1)
    plain = run(tmp_path, "plain", tiny_config())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = run(tmp_path, "ddp", tiny_config())
    finally:
        dist.destroy_process_group()
    assert comparable(wrapped) == comparable(plain)
