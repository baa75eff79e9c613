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
from tfmamba.corpora.folds import Fold
from tfmamba.corpora.manifest import Manifest
from tfmamba.errors import ConfigError, DataError, TrainingError
from tfmamba.features.store import FeatureStore
from tfmamba.training.fold import FoldResult, train_fold
from tfmamba.training.input_norm import InputNorm, fold_into_linear
from tfmamba.training.loaders import eval_batches
from tfmamba.training.distributed import Dist
from tfmamba.training.loop import make_cmdt, make_optimizer, make_scheduler, parameter_groups, train_epoch
from tfmamba.training.outputs import load_trained_model

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
                "valid_ua_best", "lr"}
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
    raw = [torch.from_numpy(store.get(u).astype(np.float32)) for u in fold.test]  # scored whole, as the trainer does
    with torch.no_grad():
        predicted = [int(model(x[None], torch.tensor([len(x)])).logits.argmax()) for x in raw]
    ua = np.mean([np.mean([p == c for p, u in zip(predicted, fold.test) if u.startswith(label)])
                  for c, label in enumerate(LABELS)])
    assert ua == pytest.approx(result.test["ua"])  # the folded weights on raw features reproduce the test


@pytest.mark.parametrize("variant", ["tf", "dual_temporal", "temporal"])
def test_a_fold_under_bf16_autocast_as_on_a_gpu(tmp_path, monkeypatch, variant):
    """On a GPU with `amp` training and evaluation run under bf16 autocast (the inference path then mixes bf16
    branch outputs into a float32 residual). Forced on here through the CPU's autocast, a whole fold trains,
    validates, tests and saves."""
    from tfmamba.training import loop

    torch.set_num_threads(1)
    monkeypatch.setattr(loop, "autocast", lambda config, device: torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=config.amp, cache_enabled=False))
    result = run(tmp_path, "amp", tiny_config(epochs=1, variant=variant, amp=True))
    assert result.status == "ok" and np.isfinite(result.valid["loss"]) and 0 <= result.test["ua"] <= 1
    assert (tmp_path / "amp" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_compiled_fold_trains_as_the_eager_one(tmp_path, monkeypatch):
    """`compile=True` runs the training steps through torch.compile (Inductor, here on the CPU): the same losses
    as the eager fold (dropout off: compiled dropout draws other random numbers), the same saved model, no graph
    break and no graph per padded length. Three things used to split the graph: the SSD's log of its backend
    choice at every scan of a process's first compiled step (hence the fresh log record here), and the model's
    and the frequency filter's host-side reads of the lengths at every step. The causal conv's backward, as
    Inductor lowers it, fixed the length (a graph per length: 3 graphs here), and the SSD's loop over chunks
    compiled once per chunk count (`tests/test_ssd.py`). A later fold in the same process (a sweep's lane) reuses
    the graphs: its new model compiles nothing."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tfmamba import ssd

    torch.set_num_threads(1)
    monkeypatch.setattr(ssd, "_LOGGED_CHOICES", set())
    torch._dynamo.reset()
    counters.clear()
    settings = dict(dropout=0.0, max_frames=None)  # clips of 12-39 frames: batches of several padded lengths
    compiled = run(tmp_path, "compiled", tiny_config(compile=True, **settings))
    breaks, graphs = dict(counters["graph_break"]), counters["stats"]["unique_graphs"]
    later = run(tmp_path, "later", tiny_config(compile=True, seed=1, **settings), data=synthetic(seed=1))
    assert later.status == "ok" and counters["stats"]["unique_graphs"] == graphs, "a later fold compiled again"
    eager = run(tmp_path, "eager", tiny_config(**settings))
    assert len(compiled.history) == len(eager.history) == 2
    for ours, theirs in zip(compiled.history, eager.history):
        for key in ("train_loss", "train_ce", "train_cmdt", "valid_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    assert not breaks, breaks
    assert graphs <= 2, f"{graphs} compiled graphs: one per padded length?"
    weights = {name: tensor for name, tensor in load_trained_model(tmp_path / "compiled")[0].state_dict().items()}
    reference = load_trained_model(tmp_path / "eager")[0].state_dict()
    assert weights.keys() == reference.keys()
    # The attention's key bias adds the same score to every key, which the softmax cancels: its gradient is round-off,
    # which AdamW scales to steps of the learning rate, so it differs with the order of any sum. The query and value
    # biases are compared.
    query_and_value = np.r_[: TINY["d_model"], 2 * TINY["d_model"]: 3 * TINY["d_model"]]
    for name in [name for name in reference if name.endswith("attn.in_proj_bias")]:
        weights[name], reference[name] = weights[name][query_and_value], reference[name][query_and_value]
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


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
    with pytest.raises(DataError, match="its training has not finished: its last checkpoint is of epoch 2 of 4; "):
        load_trained_model(tmp_path / "cut")
    # Written as before the running best was renamed (best_valid_ua, now valid_ua_best): it still resumes.
    saved = tmp_path / "cut/checkpoints/last/progress.json"
    old = json.loads(saved.read_text())
    old["history"] = [{k.replace("valid_ua_best", "best_valid_ua"): v for k, v in row.items()}
                      for row in old["history"]]
    saved.write_text(json.dumps(old))
    recorder = Recorder()
    resumed = run(tmp_path, "cut", config, recorder)
    assert [m["epoch"] for m, _ in recorder.calls[:-1]] == [3, 4]
    assert comparable(resumed) == comparable(whole)

    # A reporter's resume folder (Ray's checkpoint) works the same from an empty output folder.
    from_reporter = run(tmp_path, "elsewhere", config, Recorder(resume=tmp_path / "whole/checkpoints/last"))
    assert comparable(from_reporter) == comparable(whole)


def test_checkpoints_every_so_many_seconds_and_after_the_last_epoch(tmp_path):
    """With `checkpoint_seconds` longer than the fold, only the last epoch writes a checkpoint (the others report
    None); an interruption before it resumes from scratch, and the result is the uninterrupted run's."""
    torch.set_num_threads(1)
    every = tiny_config(epochs=3)
    sparse = every.replace(checkpoint_seconds=3600)
    recorder = Recorder()
    whole = run(tmp_path, "sparse", sparse, recorder)
    assert [folder is not None for _, folder in recorder.calls[:-1]] == [False, False, True]
    assert load_checkpoint(tmp_path / "sparse/checkpoints/last")[3]["epoch"] == 3
    assert comparable(whole) == comparable(run(tmp_path, "every", every))

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", sparse, Recorder(stop_after=2))
    assert not has_checkpoint(tmp_path / "cut/checkpoints/last")
    recorder = Recorder()
    assert comparable(run(tmp_path, "cut", sparse, recorder)) == comparable(whole)
    assert [m["epoch"] for m, _ in recorder.calls[:-1]] == [1, 2, 3]

    recorder = Recorder()
    run(tmp_path, "zero", every.replace(checkpoint_seconds=1e-9), recorder)
    assert all(folder is not None for _, folder in recorder.calls[:-1]), "a due checkpoint after every epoch"
    with pytest.raises(ConfigError, match="checkpoint_seconds"):
        every.replace(checkpoint_seconds=-1)


def test_resume_refuses_other_settings(tmp_path):
    torch.set_num_threads(1)
    run(tmp_path, "out", tiny_config(epochs=1))
    with pytest.raises(ConfigError, match="lr"):
        run(tmp_path, "out", tiny_config(epochs=2, lr=1e-2))
    store, manifest, fold = synthetic()
    swapped = Fold(index=1, name="toy", train=fold.train, valid=fold.test, test=fold.valid)
    with pytest.raises(DataError, match="belongs to another fold or utterance split"):
        run(tmp_path, "out", tiny_config(epochs=1), data=(store, manifest, swapped))
    # More epochs stretch a cosine schedule under the steps already taken: not a continuation of them.
    with pytest.raises(ConfigError, match="cosine schedule over 1 epochs, not 2"):
        run(tmp_path, "out", tiny_config(epochs=2))
    run(tmp_path, "flat", tiny_config(epochs=1, scheduler="constant"))
    longer = run(tmp_path, "flat", tiny_config(epochs=2, scheduler="constant"))  # a constant schedule continues
    assert longer.epochs_run == 2


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


class SmallDevice:
    """The model on a device too small for some batches: its forward raises the `torch.OutOfMemoryError` a GPU
    raises, worded as CUDA words it, for a training batch (`phase` "training") or for an evaluation batch of a
    clip longer than 30 frames ("validation"; "test": only once the last epoch is reported, so at the test set);
    or ("host") its training batches ask the CPU allocator for more than any machine has."""

    def __init__(self, phase: str, epochs: int) -> None:
        from tfmamba.model import TFMamba

        self.phase, self.epochs, self.armed = phase, epochs, phase != "test"
        forward = TFMamba.forward
        device = self

        def small_forward(model, features, lengths=None, *args, **kwargs):
            training = torch.is_grad_enabled()
            if device.phase == "host" and training:
                torch.empty(10**15)  # 4 PB, beyond any address space: the CPU allocator's own refusal
            if device.armed and (training if device.phase == "training" else features.shape[1] > 30 and not training):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                             "capacity of 79.19 GiB of which 1.06 GiB is free.")
            return forward(model, features, lengths, *args, **kwargs)

        self.forward = small_forward

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.armed = self.armed or metrics.get("epoch") == self.epochs


@pytest.mark.parametrize("phase, where, lower", [
    ("training", r"epoch 1, step 1: out of memory on cpu at a batch of 8 clips x 24 frames", "lower batch_size"),
    ("host", r"epoch 1, step 1: out of memory on cpu at a batch of 8 clips x 24 frames", "lower batch_size"),
    ("validation", r"evaluating 8 clips: out of memory on cpu at a batch of \d clips? x 3\d frames", "lower eval_max_frames"),
    ("test", r"evaluating 8 clips: out of memory on cpu at a batch of \d clips? x 3\d frames", "lower eval_max_frames")],
    ids=["training", "host", "validation", "test"])
def test_a_batch_too_big_for_the_device_fails_the_fold_naming_its_size(tmp_path, monkeypatch, phase, where, lower):
    """An out-of-memory error (a GPU's, the commonest failure of a sweep on one) used to end the fold in torch's
    words alone, with no metrics.json, and at the test set it skipped the failed fold's record. It is now a
    TrainingError naming the step or evaluation, the batch's size, torch's first line and the settings to lower."""
    from tfmamba.model import TFMamba

    torch.set_num_threads(1)
    recorder, device = Recorder(), SmallDevice(phase, epochs=2)
    monkeypatch.setattr(TFMamba, "forward", device.forward)
    monkeypatch.setattr(recorder, "report", lambda metrics, folder: (device.report(metrics, folder),
                                                                     Recorder.report(recorder, metrics, folder)))
    torch_words = r"CUDA out of memory\. Tried to allocate 2\.00 GiB\." if phase != "host" else "can't allocate memory"
    with pytest.raises(TrainingError, match=rf"fold 1 \(toy\), {where} \(.*{torch_words}.*\); {lower}") as caught:
        run(tmp_path, "out", tiny_config(epochs=2), recorder)
    assert "with --set, or give each worker a device with more memory" in str(caught.value)
    assert isinstance(caught.value.__cause__.__cause__, torch.OutOfMemoryError if phase != "host" else RuntimeError)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["status"] == "failed" and "out of memory" in metrics["error"]
    assert len(metrics["history"]) == {"training": 0, "host": 0, "validation": 0, "test": 2}[phase]
    assert recorder.calls[-1][0]["failed"] == 1


@pytest.mark.parametrize("bad_step", [1, 2, 3])
def test_a_non_finite_loss_is_named_by_its_own_step_though_read_one_step_late(bad_step):
    """The loss is read back one step late (no host sync on a GPU); the error still names the step it happened
    in, the last step of the epoch included, and the steps before it report their losses."""
    from tfmamba.model import ModelConfig, TFMamba

    torch.manual_seed(0)
    config = tiny_config(grad_clip=None)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), "input_dim": DIM}))
    optimizer = make_optimizer(config, model)
    batches = []
    for step in (1, 2, 3):
        features = torch.randn(4, 12, DIM)
        if step == bad_step:
            features[0, 0, 0] = float("nan")
        batches.append({"features": features, "lengths": torch.tensor([12, 9, 12, 5]),
                        "labels": torch.tensor([0, 1, 2, 3])})
    losses: list[float] = []
    with pytest.raises(TrainingError, match=rf"epoch 1, step {bad_step}: the training loss is not finite"):
        train_epoch(config, model, InputNorm(), batches, optimizer, make_scheduler(config, optimizer, 3),
                    torch.device("cpu"), 1, Dist(), make_cmdt(config), on_step=losses.append)
    assert len(losses) == bad_step - 1 and all(np.isfinite(losses))


def test_gather_path_with_a_one_process_group_matches_plain_training(tmp_path):
    torch.set_num_threads(1)
    plain = run(tmp_path, "plain", tiny_config())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = run(tmp_path, "ddp", tiny_config())
    finally:
        dist.destroy_process_group()
    assert comparable(wrapped) == comparable(plain)


def with_long_test_clip(frames: int = 1000, seed: int = 0) -> tuple[FeatureStore, Manifest, Fold]:
    """The toy corpus at 50 frames/s (WavLM's rate) plus one test clip of `frames` frames (1000 = 20 s)."""
    store, manifest, fold = synthetic(seed=seed)
    rng = np.random.default_rng(seed)
    long = rng.normal(-5.0, 2.0, size=(frames, DIM)).astype(np.float16)
    features = np.concatenate([store.features, long])
    offsets = np.concatenate([store.offsets, [store.offsets[-1] + frames]]).astype(np.int64)
    meta = {**store.metadata, "frame_rate": 50.0}
    store = FeatureStore(features, offsets, [*store.utt_ids, "long"], meta, uri="memory://long")
    row = {"utt_id": "long", "label": "sad", "speaker": "s0", "session": 1, "path": "/x/long.wav",
           "duration": frames / 50}
    manifest = Manifest(table=pd.concat([manifest.table, pd.DataFrame([row])], ignore_index=True),
                        corpus=manifest.corpus, labels=list(LABELS))
    return store, manifest, Fold(index=1, name="toy", train=fold.train, valid=fold.valid, test=[*fold.test, "long"])


def record_eval_lengths(monkeypatch) -> list[int]:
    """Every utterance length the model sees in eval mode (validation and test)."""
    from tfmamba.model import TFMamba

    seen: list[int] = []
    forward = TFMamba.forward

    def spy(self, features, lengths):
        if not self.training:
            seen.extend(lengths.tolist())
        return forward(self, features, lengths)

    monkeypatch.setattr(TFMamba, "forward", spy)
    return seen


def test_a_20_second_test_clip_is_scored_whole(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    seen = record_eval_lengths(monkeypatch)
    data = with_long_test_clip(1000)
    result = run(tmp_path, "whole", tiny_config(epochs=1), data=data)  # max_frames=24 crops training clips only
    assert 1000 in seen and result.eval_cropped == {"valid": 0, "test": 0}
    assert sum(map(sum, result.test_confusion)) == len(data[2].test)
    seen.clear()
    capped = run(tmp_path, "capped", tiny_config(epochs=1, eval_max_frames=500), data=data)
    assert max(seen) == 500 and capped.eval_cropped == {"valid": 0, "test": 1}


def test_evaluation_batches_stay_within_a_training_batch_of_frames():
    lengths = np.array([10, 10, 20, 30, 30, 30, 200])
    batches = eval_batches(np.arange(7), lengths, size=4, frame_budget=90)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]  # 3 x 20 = 60, 3 x 30 = 90; the long clip alone
    assert all(len(b) * lengths[b].max() <= 90 for b in batches[:-1])
    assert eval_batches(np.arange(7), lengths, size=4, frame_budget=None) == [[0, 1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("corpus, metric", [("meld", "valid_wf1"), ("toy", "valid_ua")])
def test_the_best_epoch_is_selected_on_the_corpus_metric(tmp_path, corpus, metric):
    torch.set_num_threads(1)
    store, manifest, fold = synthetic()
    manifest = Manifest(table=manifest.table, corpus=corpus, labels=manifest.labels)
    recorder = Recorder()
    result = run(tmp_path, corpus, tiny_config(epochs=4), recorder, data=(store, manifest, fold))
    assert result.select_metric == metric
    values = [row[metric] for row in result.history]
    assert result.best_epoch == 1 + int(np.argmax(values))  # the first epoch with the best value
    assert all(f"{metric}_best" in m for m, _ in recorder.calls[:-1])
    assert recorder.calls[-2][0][f"{metric}_best"] == max(values)
    other = "valid_ua_best" if metric == "valid_wf1" else "valid_wf1_best"
    assert all(other not in m for m, _ in recorder.calls)


def test_no_weight_decay_parameters_get_their_own_group():
    from tfmamba.model import build_model

    sizes = {k: TINY[k] for k in ("d_model", "d_state", "headdim", "num_heads", "ffn_dim")}
    model = build_model("tf", num_classes=4, input_dim=DIM, **sizes)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = parameter_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    flagged = sorted(names[id(p)] for p in no_decay["params"])
    assert flagged == sorted(f"block.{b}.{k}" for b in ("first", "second") for k in ("A_log", "D", "dt_bias")) + [
        "block.second.xbc_filter.omega_raw"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    optimizer = make_optimizer(tiny_config(), model)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_a_model_saved_before_the_frequency_branch_change_still_loads(tmp_path):
    """model.json files written before freq_conv/filter_hidden existed describe conv + a fixed omega."""
    torch.set_num_threads(1)
    run(tmp_path, "old", tiny_config(epochs=1, freq_conv=True, filter_hidden=0))
    path = tmp_path / "old" / "model.json"
    description = json.loads(path.read_text())
    for key in ("freq_conv", "filter_hidden"):
        description["model"].pop(key)
    path.write_text(json.dumps(description))
    model, _ = load_trained_model(tmp_path / "old")
    assert model.block.second.conv1d is not None and model.block.second.xbc_filter.head is None


def test_compiled_steps_pass_an_unpadded_batch_without_its_lengths(monkeypatch):
    """The compiled step cannot read the lengths without splitting its graph, so `CompiledSteps` reads them on the
    host first: nothing padded, lengths None (the unpadded graph); anything padded, the lengths. A length the
    model's graph would special-case (`compiled_frames`) is padded to one it does not, with the lengths."""
    from tfmamba.model import ModelOutput
    from tfmamba.training.loop import CompiledSteps

    seen = []

    class Recorder(torch.nn.Module):
        def compiled_frames(self, seqlen):
            return 6 if seqlen == 5 else seqlen

        def forward(self, features, lengths):
            seen.append((features, lengths))
            return ModelOutput(features[:, 0], features, torch.ones(features.shape[:2], dtype=torch.bool))

    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: net)  # the decision is taken before the graph
    steps = CompiledSteps(Recorder())
    steps(torch.ones(2, 4, 3), torch.tensor([4, 4]))
    steps(torch.ones(2, 4, 3), torch.tensor([4, 3]))
    outputs = [steps(torch.ones(2, 5, 3), torch.tensor([5, 5])), steps(torch.ones(2, 5, 3), torch.tensor([5, 2]))]
    assert seen[0][1] is None and seen[1][1].tolist() == [4, 3]
    for (features, lengths), out, expected in zip(seen[2:], outputs, ([5, 5], [5, 2])):
        assert lengths.tolist() == expected and features.shape == (2, 6, 3)
        assert features[:, :5].eq(1).all() and features[:, 5].eq(0).all()
        assert out.sequence.shape == (2, 5, 3) and out.mask.shape == (2, 5)  # the CMDT loss spans the batch's length


def test_with_cuda_graphs_a_padded_batch_is_padded_on_to_a_multiple_of_the_graph_step(monkeypatch):
    """A CUDA graph replays fixed sizes: `CompiledSteps(cuda_graphs=True)` pads a padded batch up to a multiple of
    `GRAPH_FRAME_STEP` (then off the lengths the model's graph special-cases), so a fold's lengths take a few
    graphs; an unpadded batch keeps its length and its graph without masks, unless a padded batch came first: then
    it goes through the padded graph, nothing masked. The losses see the batch's frames."""
    from tfmamba.model import ModelOutput
    from tfmamba.training.loop import GRAPH_FRAME_STEP, CompiledSteps, cuda_graph_options

    seen, options = [], []

    class Recorder(torch.nn.Module):
        def compiled_frames(self, seqlen):
            return seqlen + 1 if seqlen % 64 == 0 else seqlen

        def forward(self, features, lengths):
            seen.append((features.shape[1], None if lengths is None else lengths.tolist()))
            return ModelOutput(features[:, 0], features, torch.ones(features.shape[:2], dtype=torch.bool))

    def compile_recording(net, **kwargs):
        options.append(kwargs.get("options"))
        return net

    monkeypatch.setattr(torch, "compile", compile_recording)
    steps = CompiledSteps(Recorder(), cuda_graphs=True)
    assert options == [cuda_graph_options()] and options[0]["triton.cudagraphs"]
    assert set(options[0]) <= set(torch._inductor.list_options())  # torch.compile would reject an unknown one
    for seqlen, lengths in [(40, [40, 40]), (40, [40, 33]), (33, [33, 20]), (64, [64, 9]), (70, [70, 70])]:
        out = steps(torch.ones(2, seqlen, 3), torch.tensor(lengths))
        assert out.sequence.shape == (2, seqlen, 3) and out.mask.shape == (2, seqlen)
    assert GRAPH_FRAME_STEP == 32
    assert seen == [(40, None), (64 + 1, [40, 33]), (64 + 1, [33, 20]), (64 + 1, [64, 9]), (70, None)]
    seen.clear()
    padded_first = CompiledSteps(Recorder(), cuda_graphs=True)
    for seqlen, lengths in [(40, [40, 33]), (70, [70, 70])]:
        padded_first(torch.ones(2, seqlen, 3), torch.tensor(lengths))
    assert seen == [(64 + 1, [40, 33]), (96, [70, 70])]
    CompiledSteps(Recorder())
    assert options[-1] is None


@pytest.mark.slow
@pytest.mark.parametrize(("cuda_graphs", "first"), [(False, "unpadded"), (True, "unpadded"), (True, "padded")])
def test_compiled_steps_take_one_graph_for_every_batch_length(monkeypatch, cuda_graphs, first):
    """Traced with a symbolic length, the SSD's scan special-cases one chunk, two chunks, a whole number of chunks
    and a last chunk one frame short (47 frames here: a padding of size 1): a fold's batch lengths compiled a graph
    each, up to Dynamo's limit of 8 (then eager). `CompiledSteps` pads those batches, so one graph serves every
    padded batch and one every unpadded batch, with the eager model's losses (CMDT included: its spectrum spans the batch's length, not the padded one). With CUDA graphs
    padded batches are padded further (`GRAPH_FRAME_STEP`), with the same losses (the graphs themselves need a GPU:
    Inductor's options for them are left out of this CPU compile). Once the padded graph exists, unpadded batches
    go through it too, nothing masked, rather than compile a second graph: one graph when a padded batch comes
    first, as in most folds."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tfmamba.model import TFMamba
    from tfmamba.model_config import ModelConfig
    from tfmamba.ssd import resolve_backend
    from tfmamba.training import loop
    from tfmamba.training.loop import Batch, CompiledSteps, batch_losses

    monkeypatch.setattr(loop, "cuda_graph_options", lambda: None)

    torch.set_num_threads(1)
    torch._dynamo.reset()
    counters.clear()
    config = tiny_config(dropout=0.0, cmdt_weight=0.1)
    assert config.model.chunk_size == 16
    torch.manual_seed(0)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), "input_dim": DIM})).train()
    resolve_backend(config.model.ssd_backend, torch.device("cpu"))  # as `step_module` does, before the graph
    steps = CompiledSteps(model, backend="aot_eager", cuda_graphs=cuda_graphs)
    cmdt = make_cmdt(config)
    for size, frames in [(4, 40), (4, 10), (3, 24), (4, 32), (2, 48), (3, 57), (4, 47)]:  # 3, 1, 2, 2, 3, 4, 3 chunks
        for padded in (first == "padded", first != "padded"):
            lengths = torch.full((size,), frames)
            if padded:
                lengths[1:] = torch.arange(1, size) * frames // size
            batch = Batch(torch.randn(size, frames, DIM), lengths, torch.arange(size) % 2)  # CMDT needs positives
            ours = batch_losses(config, steps, batch, cmdt, torch.device("cpu"))
            theirs = batch_losses(config, model, batch, cmdt, torch.device("cpu"))
            for got, expected in zip(ours, theirs):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{size} x {frames}, {padded=}")
    assert counters["stats"]["unique_graphs"] == (1 if first == "padded" else 2)
    assert steps.graphs == ({True} if first == "padded" else {False, True})


def test_cuda_graphs_are_left_off_on_a_cpu_and_the_log_says_so(caplog):
    """`step_module` compiles without CUDA graphs where none can replay, and logs why rather than failing."""
    from tfmamba.model import TFMamba
    from tfmamba.model_config import ModelConfig
    from tfmamba.training.loop import CompiledSteps, step_module

    config = tiny_config(compile=True, cuda_graphs=True)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), "input_dim": DIM}))
    with caplog.at_level("WARNING", logger="tfmamba.training.loop"):
        steps = step_module(config, model, torch.device("cpu"))
    assert isinstance(steps, CompiledSteps) and not steps.cuda_graphs
    assert "cuda_graphs is left off" in caplog.text and "cpu" in caplog.text


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(small_disks):
    """A full disk at epoch 2: StorageError naming the folder, epoch and reason; epoch 1's checkpoint is whole and
    nothing partial is left beside it."""
    from tfmamba.checkpoint import read_progress, save_checkpoint
    from tfmamba.errors import StorageError

    disk = small_disks.mount(1)
    model = torch.nn.Linear(64, 64)
    best = {key: value.clone() for key, value in model.state_dict().items()}
    folder = disk / "checkpoints" / "last"
    save_checkpoint(folder, model, best, {"step": torch.tensor(1)}, {"epoch": 1})
    small_disks.fill(disk, leave=8 * 1024)  # the weights alone are 16 KB
    with pytest.raises(StorageError) as caught:
        save_checkpoint(folder, model, best, {"step": torch.tensor(2)}, {"epoch": 2})
    assert str(caught.value) == (f"{folder}: cannot write the checkpoint of epoch 2 (No space left on device); the "
                                 "previous checkpoint is kept, to resume from")
    assert has_checkpoint(folder) and read_progress(folder)["epoch"] == 1
    assert [p.name for p in folder.parent.iterdir()] == ["last"]
    assert load_checkpoint(folder)[3]["epoch"] == 1
