"""What the trainer feeds the model: a fold's datasets and its training and evaluation loaders.

Training batches come from `LengthBucketSampler` (split by rank under DDP, global batch size
`batch_size`) over clips cropped to `max_frames`; evaluation batches are this rank's every
world-th utterance, sorted by length and never padded by repetition, so gathering all ranks'
predictions scores each utterance exactly once. Validation and test utterances are whole (up to
`eval_max_frames`, if set): an evaluation batch holds at most `batch_size` utterances and at most
as many padded frames as a training batch (`batch_size * max_frames`), so a long clip is scored in
a smaller batch, alone if need be, and memory stays near the training batch's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from tfmamba.config import TrainConfig
from tfmamba.corpora.folds import Fold
from tfmamba.corpora.manifest import Manifest
from tfmamba.errors import DataError
from tfmamba.features.dataset import FeatureDataset, LengthBucketSampler, pad_collate
from tfmamba.features.store import FeatureStore


def fold_digest(fold: Fold) -> str:
    """A hash of the fold's three utterance lists, to refuse resuming a checkpoint of another fold."""
    payload = json.dumps([fold.index, sorted(fold.train), sorted(fold.valid), sorted(fold.test)])
    return hashlib.sha256(payload.encode()).hexdigest()


PARTS = ("train", "valid", "test")


def fold_labels(fold: Fold, manifest: Manifest) -> dict[str, list[int]]:
    """Class indices of each part's utterances ("train", "valid", "test"); DataError for unknown ids or empty parts."""
    by_id = dict(zip(manifest.table["utt_id"].astype(str), manifest.table["label"].astype(str)))
    out = {}
    for part in PARTS:
        ids = getattr(fold, part)
        if not ids:
            raise DataError(f"fold {fold.index} ({fold.name}): the {part} set is empty")
        missing = [u for u in ids if u not in by_id]
        if missing:
            raise DataError(f"fold {fold.index}: {len(missing)} {part} utterances are not in manifest "
                            f"{manifest.path or manifest.corpus}: {missing[:5]} (folds made for another manifest?)")
        out[part] = [manifest.label_index(by_id[u]) for u in ids]
    return out


@dataclass
class FoldData:
    """The three datasets of a fold, and how many utterances of each the cache's build skipped."""

    train: FeatureDataset
    valid: FeatureDataset
    test: FeatureDataset
    skipped: dict[str, int] = field(default_factory=dict)


def fold_datasets(config: TrainConfig, fold: Fold, manifest: Manifest, store: FeatureStore) -> FoldData:
    """The fold's datasets, without the utterances the cache's build skipped (a clip that cannot be decoded, one
    over the length cap: its problems.csv says why). An utterance missing for no recorded reason is a DataError:
    the cache is another one, or its build has not finished."""
    labels = fold_labels(fold, manifest)
    present = {part: [u in store for u in getattr(fold, part)] for part in PARTS}
    skipped = {part: flags.count(False) for part, flags in present.items()}
    if any(skipped.values()):
        check_skipped_when_built(fold, store, [u for part in PARTS for u, here in zip(getattr(fold, part),
                                                                                    present[part]) if not here])

    def make(part: str, max_frames: int | None, random_crop: bool) -> FeatureDataset:
        kept = [(u, label) for u, label, here in zip(getattr(fold, part), labels[part], present[part]) if here]
        if not kept:
            raise DataError(f"fold {fold.index} ({fold.name}): every one of its {len(present[part])} {part} "
                            f"utterances was skipped when feature cache {store.uri} was built (see its problems.csv)")
        return FeatureDataset(store, [u for u, _ in kept], [label for _, label in kept], max_frames=max_frames,
                              random_crop=random_crop, seed=config.seed)

    return FoldData(make("train", config.max_frames, True), make("valid", config.eval_max_frames, False),
                    make("test", config.eval_max_frames, False), skipped)


def check_skipped_when_built(fold: Fold, store: FeatureStore, missing: list[str]) -> None:
    """DataError unless every utterance of `missing` is one the cache's build skipped, with its reason."""
    recorded = store.skipped_when_built()
    unexplained = [u for u in missing if u not in recorded]
    if unexplained:
        raise DataError(f"fold {fold.index}: {len(unexplained)} utterances are not in feature cache {store.uri}, "
                        f"and its problems.csv does not say why: {unexplained[:5]}"
                        f"{' ...' if len(unexplained) > 5 else ''} (a cache of another manifest, or a build that "
                        f"has not finished: the same `tfmamba features` command completes it)")


def cropped_count(dataset: FeatureDataset) -> int:
    """How many of `dataset`'s utterances are longer than its `max_frames` (so cropped when read)."""
    if dataset.max_frames is None:
        return 0
    return int((dataset.store.lengths[dataset.rows] > dataset.max_frames).sum())


def batch_dtype(gpu: bool) -> torch.dtype | None:
    """The features' dtype in a batch: float32 for a CPU; for a GPU the store's own (float16), which halves
    the bytes the loader pads and pins and the GPU copies (32 x 600 x 1024 frames: 41 -> 19 ms to pad on one
    core); the training step converts on the GPU (`loop.to_device`)."""
    return None if gpu else torch.float32


def train_loader(config: TrainConfig, dataset: FeatureDataset, world: int, rank: int,
                 gpu: bool = False) -> tuple[DataLoader, LengthBucketSampler]:
    """Shuffled length-bucketed batches of `batch_size // world` per rank (so `batch_size` is the global batch);
    for a `gpu`, pinned (the copies to the device are asynchronous) and in `batch_dtype`."""
    per_rank = max(1, config.batch_size // world)
    sampler = LengthBucketSampler(dataset.lengths, per_rank, shuffle=True, seed=config.seed,
                                  num_replicas=world, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=partial(pad_collate, dtype=batch_dtype(gpu)),
                        num_workers=config.num_workers, pin_memory=gpu)
    return loader, sampler


def eval_loader(config: TrainConfig, dataset: FeatureDataset, world: int, rank: int, gpu: bool = False) -> DataLoader:
    """This rank's share of `dataset` (indices rank, rank + world, ...), batched in increasing length:
    at most `batch_size // world` utterances and `batch_size // world * max_frames` padded frames a batch;
    for a `gpu` pinned and in `batch_dtype`, as `train_loader`'s."""
    mine = np.arange(rank, len(dataset), world)
    lengths = dataset.lengths[mine]
    order = np.argsort(lengths, kind="stable")
    size = max(1, config.batch_size // world)
    budget = None if config.max_frames is None else size * config.max_frames
    return DataLoader(dataset, batch_sampler=eval_batches(mine[order], lengths[order], size, budget),
                      collate_fn=_IndexedCollate(dataset, batch_dtype(gpu)), num_workers=config.num_workers,
                      pin_memory=gpu)


def eval_batches(indices: np.ndarray, lengths: np.ndarray, size: int, frame_budget: int | None) -> list[list[int]]:
    """Cut `indices` (sorted by increasing `lengths`) into batches of at most `size` items whose padded size
    (items x longest) stays within `frame_budget`; an item longer than the budget is a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index, length in zip(indices.tolist(), lengths.tolist()):
        # lengths increase, so the batch's padded size with this item is (items + 1) * length
        over_budget = frame_budget is not None and (len(current) + 1) * length > frame_budget
        if current and (len(current) == size or over_budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class _IndexedCollate:
    """pad_collate plus each item's dataset index (found from its utt_id), for gathering predictions."""

    def __init__(self, dataset: FeatureDataset, dtype: torch.dtype | None) -> None:
        self.position = {u: i for i, u in enumerate(dataset.utt_ids)}
        self.dtype = dtype

    def __call__(self, batch: list[dict]) -> dict:
        out = pad_collate(batch, self.dtype)
        out["indices"] = torch.tensor([self.position[item["utt_id"]] for item in batch], dtype=torch.long)
        return out
