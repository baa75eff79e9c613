"""Training-side reading of a feature cache: a Dataset, a padding collate and a length-bucketing batch sampler.

Items are views into the store's one contiguous float16 array; `pad_collate` makes the float32
batch. Cropping to `max_frames`: with `random_crop=True` (training) a random window, drawn from
(seed, epoch, index) so it does not depend on DataLoader workers; otherwise (evaluation) the
centre `max_frames` frames, which skips the leading and trailing silence of a long clip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from tfmamba.errors import ConfigError, DataError
from tfmamba.features.store import FeatureStore

log = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """Utterances `utt_ids` of a `FeatureStore` with integer `labels`; items are dicts (features, label, utt_id)."""

    def __init__(self, store: FeatureStore, utt_ids: Sequence[str], labels: Sequence[int],
                 max_frames: int | None = None, random_crop: bool = False, seed: int = 0) -> None:
        if len(utt_ids) != len(labels):
            raise DataError(f"{len(utt_ids)} utt_ids but {len(labels)} labels")
        missing = [u for u in utt_ids if u not in store]
        if missing:
            raise DataError(f"{len(missing)} utterances are not in feature cache {store.uri}: "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''} (skipped when it was built? "
                            f"see its problems.csv)")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be positive, got {max_frames}")
        self.store = store
        self.utt_ids = list(utt_ids)
        self.rows = np.array([store.index[u] for u in self.utt_ids], dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.max_frames = max_frames
        self.random_crop = random_crop
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops for a new epoch."""
        self.epoch = epoch

    @property
    def lengths(self) -> np.ndarray:
        """Frames per item after cropping, for `LengthBucketSampler`."""
        lengths = self.store.lengths[self.rows]
        return lengths if self.max_frames is None else np.minimum(lengths, self.max_frames)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        start, end = int(self.store.offsets[row]), int(self.store.offsets[row + 1])
        n = end - start
        if self.max_frames is not None and n > self.max_frames:
            if self.random_crop:
                rng = np.random.default_rng((self.seed, self.epoch, int(i)))
                offset = int(rng.integers(0, n - self.max_frames + 1))
            else:
                offset = (n - self.max_frames) // 2
            start, end = start + offset, start + offset + self.max_frames
        return {"features": torch.from_numpy(self.store.features[start:end]),
                "label": int(self.labels[i]), "utt_id": self.utt_ids[i]}


def pad_collate(batch: Sequence[dict], dtype: torch.dtype | None = torch.float32) -> dict:
    """Zero-pad to the longest item: features (B, L, D) in `dtype` (None: the items' own, the store's float16),
    mask bool (B, L), lengths/labels long (B,), utt_ids."""
    lengths = torch.tensor([item["features"].shape[0] for item in batch], dtype=torch.long)
    shape = (len(batch), int(lengths.max()), batch[0]["features"].shape[1])
    features = _batch_tensor(shape, dtype or batch[0]["features"].dtype)
    for i, item in enumerate(batch):
        n = int(lengths[i])
        features[i, :n] = item["features"]
        features[i, n:] = 0
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    return {"features": features, "lengths": lengths, "mask": mask,
            "labels": torch.tensor([item["label"] for item in batch], dtype=torch.long),
            "utt_ids": [item["utt_id"] for item in batch]}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker, in shared memory, as torch's `default_collate`
    makes its batches: a worker's batch is sent to the main process through shared memory, and a batch made in
    ordinary memory would first be copied there whole (`benchmarks/loader_throughput.py`)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar lengths, so little of each batch is padding.

    Shuffled: indices are permuted, cut into pools of 50 batches, each pool sorted by length and
    cut into batches, and the batch order shuffled; all from (seed, epoch), so `set_epoch` gives a
    new, reproducible order. Not shuffled: batches in increasing length. With `num_replicas > 1`
    (data-parallel training) replica `rank` takes every num_replicas-th batch; the batch list is
    padded by repetition so every replica gets the same count.
    """

    POOL = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.epoch))
            order = rng.permutation(len(self.lengths))
            pool = self.batch_size * self.POOL
            order = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(pool, len(order), pool))] or [order])
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[i: i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1 and batches:
            per = -(-len(batches) // self.num_replicas)
            batches = (batches * self.num_replicas)[: per * self.num_replicas][self.rank:: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n = len(self.lengths) // self.batch_size if self.drop_last else -(-len(self.lengths) // self.batch_size)
        return -(-n // self.num_replicas) if self.num_replicas > 1 else n
