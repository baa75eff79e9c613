"""FeatureDataset, pad_collate and LengthBucketSampler on a small in-memory-written cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tfmamba.errors import DataError
from tfmamba.features.dataset import FeatureDataset, LengthBucketSampler, pad_collate
from tfmamba.features.store import FeatureStore
from tfmamba.features.writer import FeatureWriter

IDENTITY = {"extractor": "fbank", "revision": "fbank-v1", "layer": None, "dim": 3, "frame_rate": 100.0,
            "sample_rate": 16000}
LENGTHS = [5, 12, 3, 30, 8, 17, 1, 22]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    uri = str(tmp_path_factory.mktemp("cache"))
    with FeatureWriter(uri, IDENTITY, "h", shard_size=3) as writer:
        for i, n in enumerate(LENGTHS):
            # frame t of utterance i holds (i, t, -t) so crops can be checked exactly
            writer.add(f"u{i}", np.stack([np.full(n, i), np.arange(n), -np.arange(n)], 1).astype(np.float32))
    return FeatureStore.open(uri)


def ids() -> list[str]:
    return [f"u{i}" for i in range(len(LENGTHS))]


def test_collate_pads_and_masks(store):
    data = FeatureDataset(store, ids(), list(range(8)))
    batch = pad_collate([data[0], data[3], data[6]])
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (3, 30, 3)
    assert batch["lengths"].tolist() == [5, 30, 1] and batch["labels"].tolist() == [0, 3, 6]
    assert batch["lengths"].dtype == batch["labels"].dtype == torch.long
    assert batch["utt_ids"] == ["u0", "u3", "u6"]
    assert batch["mask"].sum(1).tolist() == [5, 30, 1]
    assert torch.all(batch["features"][0, 5:] == 0) and torch.all(batch["features"][0, :5, 0] == 0)
    assert batch["features"][1, 29].tolist() == [3.0, 29.0, -29.0]


def test_batches_for_a_gpu_keep_the_stores_float16_and_the_step_converts_them(store):
    """A GPU's batches are padded in the store's float16 (half the bytes to pad, pin and copy); `to_device`
    standardises them in float32, with the same values as a CPU's float32 batch."""
    from tfmamba.training.input_norm import InputNorm
    from tfmamba.training.loaders import _IndexedCollate, batch_dtype
    from tfmamba.training.loop import to_device

    data = FeatureDataset(store, ids(), list(range(8)))
    assert data[3]["features"].dtype == torch.float16
    items = [data[0], data[3], data[6]]
    half, full = pad_collate(items, dtype=batch_dtype(gpu=True)), pad_collate(items, dtype=batch_dtype(gpu=False))
    assert half["features"].dtype == torch.float16 and full["features"].dtype == torch.float32
    assert not half["features"][0, 5:].any()
    norm = InputNorm(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    on_device = to_device(half, norm, torch.device("cpu"))
    assert on_device.features.dtype == torch.float32
    assert torch.equal(on_device.features, to_device(full, norm, torch.device("cpu")).features)
    assert _IndexedCollate(data, batch_dtype(gpu=True))(items)["features"].dtype == torch.float16


def test_missing_utterances_are_listed(store):
    with pytest.raises(DataError, match=r"2 utterances.*'gone1', 'gone2'"):
        FeatureDataset(store, ["u0", "gone1", "gone2"], [0, 1, 2])
    with pytest.raises(DataError, match="labels"):
        FeatureDataset(store, ["u0"], [0, 1])


def test_eval_crop_is_centred_and_train_crop_random_but_reproducible(store):
    evaluation = FeatureDataset(store, ids(), [0] * 8, max_frames=10)
    item = evaluation[3]["features"]
    assert item.shape == (10, 3) and item[0, 1] == 10  # (30 - 10) // 2
    assert evaluation[0]["features"].shape == (5, 3)
    assert evaluation.lengths.tolist() == [min(n, 10) for n in LENGTHS]
    train = FeatureDataset(store, ids(), [0] * 8, max_frames=10, random_crop=True, seed=1)
    starts = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        first = int(train[3]["features"][0, 1])
        assert int(train[3]["features"][0, 1]) == first
        assert train[3]["features"][:, 1].tolist() == list(range(first, first + 10))
        starts.add(first)
    assert len(starts) > 1
    again = FeatureDataset(store, ids(), [0] * 8, max_frames=10, random_crop=True, seed=1)
    again.set_epoch(5)
    assert int(again[3]["features"][0, 1]) == first


def test_sampler_groups_lengths_and_is_deterministic():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, size=1000)
    sampler = LengthBucketSampler(lengths, batch_size=10, shuffle=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(1000)[:10]]) for _ in range(100)])
    assert spread < random_spread / 5
    assert batches == list(LengthBucketSampler(lengths, 10, shuffle=True, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ordered = list(LengthBucketSampler(lengths, 10, shuffle=False))
    assert [lengths[b].max() for b in ordered] == sorted(lengths[b].max() for b in ordered)


def test_sampler_drop_last_and_replicas():
    lengths = list(range(25))
    assert len(list(LengthBucketSampler(lengths, 10, drop_last=True))) == len(LengthBucketSampler(lengths, 10, drop_last=True)) == 2
    assert [len(b) for b in LengthBucketSampler(lengths, 10, shuffle=False)] == [10, 10, 5]
    parts = [list(LengthBucketSampler(lengths, 4, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(LengthBucketSampler(lengths, 4, num_replicas=2)) == 4
    assert {i for p in parts for b in p for i in b} == set(range(25))


def test_dataloader_end_to_end(store):
    data = FeatureDataset(store, ids(), list(range(8)), max_frames=16, random_crop=True)
    loader = DataLoader(data, batch_sampler=LengthBucketSampler(data.lengths, 3, seed=0), collate_fn=pad_collate)
    seen = []
    for batch in loader:
        assert batch["features"].shape[1] == int(batch["lengths"].max()) <= 16
        seen += batch["utt_ids"]
    assert sorted(seen) == sorted(ids())


def _collate_noting_where(batch: list[dict]) -> dict:
    """pad_collate(float16), noting whether the features were made in shared memory where they were made."""
    out = pad_collate(batch, dtype=None)
    return out | {"made_shared": out["features"].is_shared()}


def test_workers_pad_their_batches_in_shared_memory_with_the_same_values(store):
    """A worker makes its batch in shared memory (so it is not copied there whole to be sent), the main process
    in ordinary memory, with the same values: the padding zero although the memory was not zeroed first."""
    data = FeatureDataset(store, ids(), list(range(8)))
    sampler = LengthBucketSampler(data.lengths, 3, seed=0)
    seen = {workers: list(DataLoader(data, batch_sampler=sampler, collate_fn=_collate_noting_where,
                                     num_workers=workers, multiprocessing_context="fork" if workers else None))
            for workers in (0, 2)}
    assert len(seen[0]) == len(seen[2]) == 3
    assert [b["made_shared"] for b in seen[2]] == [True] * 3 and [b["made_shared"] for b in seen[0]] == [False] * 3
    for ours, theirs in zip(seen[2], seen[0]):
        assert torch.equal(ours["features"], theirs["features"]) and torch.equal(ours["mask"], theirs["mask"])
        assert not ours["features"][~ours["mask"]].any()
