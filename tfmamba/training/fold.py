"""The fold trainer: `train_fold` trains one cross-validation fold, standalone or inside a Ray Train worker.

Per epoch: train (CE and CMDT reported separately), evaluate on validation, write a checkpoint,
then tell the reporter. The best epoch is chosen on the validation set only (`select_metric`;
"auto": the corpus's, validation WF1 on MELD and UA elsewhere); its weights are evaluated on the
test set once, at the end. Validation and test utterances are scored whole (`eval_max_frames`).
A restart with the same `out_dir` (or a `reporter.resume_dir()`) continues from the last
checkpoint and ends with the same metrics as an uninterrupted run. The library never imports Ray:
the orchestration passes a `Reporter` that forwards to `ray.train.report` (see docs/contracts.md).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from tfmamba.checkpoint import cpu_state_dict, has_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tfmamba.config import TrainConfig
from tfmamba.corpora.folds import Fold
from tfmamba.corpora.manifest import Manifest
from tfmamba.device import pick_device
from tfmamba.errors import ConfigError, DataError, DeviceMemoryError, TrainingError
from tfmamba.features.dataset import FeatureDataset
from tfmamba.features.store import FeatureStore
from tfmamba.metrics import best_name, compute_metrics
from tfmamba.model import LEGACY_MODEL_SETTINGS, TFMamba
from tfmamba.progress_bar import progress_bar
from tfmamba.training import distributed
from tfmamba.training.input_norm import InputNorm, input_norm
from tfmamba.training.loaders import cropped_count, eval_loader, fold_datasets, fold_digest, train_loader
from tfmamba.training.loop import evaluate, make_cmdt, make_optimizer, make_scheduler, step_module, train_epoch
from tfmamba.training.outputs import CHECKPOINT_DIR, deployable_weights, model_description, write_json, write_outputs

__all__ = ["FoldResult", "Reporter", "train_fold"]

logger = logging.getLogger(__name__)

PROGRESS_VERSION = 1
# Settings that may change between an interrupted run and its resumption (`epochs` only on a constant schedule).
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "num_workers", "compile", "cuda_graphs", "checkpoint_seconds"})


class Reporter(Protocol):
    """Where per-epoch metrics and checkpoints go (Ray Train's `report` in a sweep, nothing standalone)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Called by every rank after each epoch, with the checkpoint written then (the folder on rank 0; None
        elsewhere, and on epochs that wrote none: `checkpoint_seconds`), once more at the end with the test
        metrics, or once with `failed=1` when training fails."""

    def resume_dir(self) -> Path | None:
        """A checkpoint folder written by an earlier attempt of this fold, or None."""


@dataclass
class FoldResult:
    """The outcome of one fold, as written to `metrics.json`."""

    fold: int
    status: str
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    test_confusion: list[list[int]]
    labels: list[str]
    history: list[dict[str, float]]
    out_dir: str
    train_seconds: float
    error: str | None = None
    select_metric: str = ""  # the validation metric that chose best_epoch
    eval_cropped: dict[str, int] = field(default_factory=dict)  # valid/test clips cut to eval_max_frames
    skipped_when_built: dict[str, int] = field(default_factory=dict)  # train/valid/test clips the cache lacks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Progress:
    """What a checkpoint remembers besides tensors: history, best so far, elapsed time."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    best_weights: dict[str, torch.Tensor] | None = None  # loaded from a checkpoint; not in progress.json

    @property
    def epoch(self) -> int:
        return len(self.history)

    def improves(self, value: float, higher_is_better: bool) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if higher_is_better else value < self.best_value


def train_fold(config: TrainConfig, fold: Fold, store: FeatureStore, reporter: Reporter | None = None, *,
               manifest: Manifest, out_dir: str | Path, device: str | None = None,
               progress: bool = True) -> FoldResult:
    """Train `fold` on the features of `store`, write the output folder `out_dir` and return the result.

    Raises TrainingError (after reporting `failed=1` and writing metrics.json with status "failed")
    when a loss turns NaN or Inf or a batch does not fit in memory; ConfigError/DataError for bad settings or
    data.
    """
    started = time.monotonic()
    where = distributed.current()
    dev = pick_device(device)
    out_dir = Path(out_dir)
    _seed_everything(config.seed)
    data = fold_datasets(config, fold, manifest, store)
    select, higher_is_better = config.selection(manifest.corpus)
    if any(data.skipped.values()):
        logger.warning("fold %d: %s utterances were skipped when the feature cache was built (its problems.csv "
                       "says why) and are left out", fold.index,
                       ", ".join(f"{count} {part}" for part, count in data.skipped.items()))
    cropped = {"valid": cropped_count(data.valid), "test": cropped_count(data.test)}
    if any(cropped.values()):
        logger.warning("fold %d: %d valid and %d test utterances are longer than eval_max_frames=%s and are "
                       "centre-cropped", fold.index, cropped["valid"], cropped["test"], config.eval_max_frames)
    labels = list(manifest.labels)
    model_config = config.model_config(len(labels), store.dim)
    model = TFMamba(model_config).to(dev)
    norm = input_norm(config, data.train, model_config.d_model).to(dev)
    gpu = dev.type == "cuda"
    loader, sampler = train_loader(config, data.train, where.world, where.rank, gpu=gpu)
    valid_loader = eval_loader(config, data.valid, where.world, where.rank, gpu=gpu)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, len(sampler))
    cmdt = make_cmdt(config)
    state = _resume(config, fold, reporter, out_dir, model, optimizer, scheduler)
    _check_same_start(state.epoch, where)
    net = distributed.wrap(model, dev, where)
    step_net = step_module(config, net, dev)
    best_weights = state.best_weights if state.best_weights is not None else cpu_state_dict(model)
    logger.info("fold %d (%s): %d train / %d valid / %d test utterances, %s on %s, best epoch on %s, %s",
                fold.index, fold.name, len(data.train), len(data.valid), len(data.test), model_config.variant, dev, select,
                f"resuming after epoch {state.epoch}" if state.epoch else "from scratch")
    bar = progress_bar(total=config.epochs * len(sampler), initial=min(state.epoch, config.epochs) * len(sampler),
               desc=f"fold {fold.index}", unit="step", disable=not (progress and where.is_main))
    seconds_before, epoch = state.seconds, state.epoch
    last_checkpoint = time.monotonic()
    try:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.stopped_early:
                break
            sampler.set_epoch(epoch)
            data.train.set_epoch(epoch)
            row: dict[str, float] = {"epoch": epoch}
            row |= train_epoch(config, step_net, norm, loader, optimizer, scheduler, dev, epoch, where, cmdt,
                               on_step=lambda loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
            valid = evaluate(config, net, norm, valid_loader, len(data.valid), dev, where)
            if not math.isfinite(valid.loss):
                raise TrainingError(f"epoch {epoch}: the validation loss is not finite ({valid.loss})")
            row |= {"valid_loss": valid.loss, **compute_metrics(valid.labels, valid.predicted, labels).to_dict("valid_")}
            if state.improves(row[select], higher_is_better):
                state.best_epoch, state.best_value = epoch, row[select]
                best_weights = cpu_state_dict(model)
            row |= {best_name(select): float(state.best_value), "lr": float(scheduler.get_last_lr()[0])}
            state.history.append(row)
            state.stopped_early = bool(config.patience) and epoch - state.best_epoch >= config.patience
            state.seconds = seconds_before + time.monotonic() - started
            _log_epoch(fold, config, row, select if state.stopped_early else None)
            bar.set_postfix({"epoch": epoch, select: f"{row[select]:.3f}"})
            checkpoint = None
            if _checkpoint_due(config, epoch, state.stopped_early, time.monotonic() - last_checkpoint):
                checkpoint = _save(config, fold, out_dir, model, best_weights, optimizer, scheduler, state, where)
                last_checkpoint = time.monotonic()
            distributed.barrier(where)
            if reporter is not None:
                reporter.report(dict(row), checkpoint)
        bar.close()
        return _finish(config, fold, store, data.test, labels, model, norm, best_weights, state, out_dir, dev, where,
                       reporter, seconds_before + time.monotonic() - started, select, cropped, data.skipped)
    except TrainingError as err:
        message = f"fold {fold.index} ({fold.name}), {err}"
        alone = isinstance(err, DeviceMemoryError) and where.world > 1  # the other ranks may wait in a collective
        _fail(fold, labels, out_dir, state, message, epoch, None if alone else reporter, where)
        raise type(err)(message) from err
    finally:
        bar.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume(config: TrainConfig, fold: Fold, reporter: Reporter | None, out_dir: Path, model: TFMamba,
            optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> _Progress:
    """Load the newest checkpoint of this fold into the model, optimiser, scheduler and RNGs, if there is one."""
    folder = reporter.resume_dir() if reporter is not None else None
    if folder is not None and not has_checkpoint(folder):
        raise DataError(f"{folder}: the reporter's resume folder is not a complete checkpoint")
    folder = folder if folder is not None else out_dir / CHECKPOINT_DIR
    if not has_checkpoint(folder):
        return _Progress()
    weights, best, state, saved = load_checkpoint(folder)
    if saved.get("fold_digest") != fold_digest(fold):
        raise DataError(f"{folder}: the checkpoint belongs to another fold or utterance split; "
                        f"use another output folder")
    # A checkpoint older than a setting was made with that setting's then-fixed behaviour.
    legacy = {**LEGACY_MODEL_SETTINGS, "eval_max_frames": saved["config"].get("max_frames")}
    before, now = TrainConfig.from_dict({**legacy, **saved["config"]}).to_dict(), config.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before[k] != now[k])
    if changed:
        raise ConfigError(f"{folder}: the checkpoint was trained with other settings ({', '.join(changed)}); "
                          f"use another output folder or the same settings")
    if now["scheduler"] == "cosine" and before["epochs"] != now["epochs"]:
        raise ConfigError(f"{folder}: the checkpoint was trained on a cosine schedule over {before['epochs']} epochs, "
                          f"not {now['epochs']} (they set every step's learning rate, so this would not continue it); "
                          f"resume it with epochs={before['epochs']}, or train {now['epochs']} in another output "
                          f"folder")
    model.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    logger.info("resuming fold %d from %s (epoch %d)", fold.index, folder, saved["epoch"])
    return _Progress(history=saved["history"], best_epoch=saved["best_epoch"], best_value=saved["best_value"],
                     stopped_early=saved["stopped_early"], seconds=saved["seconds"], best_weights=best)


def _check_same_start(epoch: int, where: distributed.Dist) -> None:
    """Every rank must resume from the same epoch (a rank without the checkpoint would diverge silently)."""
    starts = distributed.all_gather(epoch, where)
    if len(set(starts)) > 1:
        raise DataError(f"ranks found different checkpoints to resume from (epochs {starts}); "
                        f"give every worker the same resume folder")


def _checkpoint_due(config: TrainConfig, epoch: int, stopped_early: bool, since_last: float) -> bool:
    """Whether this epoch writes a checkpoint: every epoch with `checkpoint_seconds` 0, else once that much time
    has passed since the last one (or the fold started), and always after the fold's last epoch."""
    last_epoch = stopped_early or epoch >= config.epochs
    return last_epoch or since_last >= config.checkpoint_seconds


def _save(config: TrainConfig, fold: Fold, out_dir: Path, model: TFMamba, best_weights: dict[str, torch.Tensor],
          optimizer: torch.optim.Optimizer, scheduler: LambdaLR, state: _Progress, where: distributed.Dist) -> Path | None:
    """Rank 0 writes the epoch's checkpoint folder and returns it; other ranks return None."""
    if not where.is_main:
        return None
    progress = {"format_version": PROGRESS_VERSION, "epoch": state.epoch, "history": state.history,
                "best_epoch": state.best_epoch, "best_value": state.best_value, "stopped_early": state.stopped_early,
                "seconds": state.seconds, "fold": fold.index, "fold_name": fold.name,
                "fold_digest": fold_digest(fold), "config": config.to_dict()}
    tensors = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
    return save_checkpoint(out_dir / CHECKPOINT_DIR, model, best_weights, tensors, progress)


def _log_epoch(fold: Fold, config: TrainConfig, row: dict[str, float], stopped_on: str | None) -> None:
    logger.info("fold %d epoch %d/%d: train ce %.4f cmdt %.4f | valid loss %.4f WA %.3f UA %.3f WF1 %.3f | "
                "lr %.2e%s", fold.index, row["epoch"], config.epochs, row["train_ce"], row["train_cmdt"],
                row["valid_loss"], row["valid_wa"], row["valid_ua"], row["valid_wf1"], row["lr"],
                f" | early stop: no better {stopped_on} for {config.patience} epochs" if stopped_on else "")


def _fail(fold: Fold, labels: list[str], out_dir: Path, state: _Progress, message: str, epoch: int,
          reporter: Reporter | None, where: distributed.Dist) -> None:
    """Record a failed fold: metrics.json with status "failed" (the main rank), and `failed=1` to the reporter,
    which every rank calls (Ray's report is a barrier): None for a failure of one rank alone."""
    logger.error("%s", message)
    if where.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        result = FoldResult(fold=fold.index, status="failed", best_epoch=state.best_epoch, epochs_run=state.epoch,
                            valid={}, test={}, test_confusion=[], labels=labels, history=state.history,
                            out_dir=str(out_dir), train_seconds=state.seconds, error=message)
        write_json(out_dir / "metrics.json", result.to_dict())
    if reporter is not None:
        reporter.report({"epoch": float(epoch), "failed": 1.0}, None)


def _finish(config: TrainConfig, fold: Fold, store: FeatureStore, test_set: FeatureDataset, labels: list[str],
            model: TFMamba, norm: InputNorm, best_weights: dict[str, torch.Tensor], state: _Progress, out_dir: Path, device: torch.device,
            where: distributed.Dist, reporter: Reporter | None, seconds: float, select: str,
            cropped: dict[str, int], skipped: dict[str, int]) -> FoldResult:
    """Evaluate the best epoch's weights on the test set (once), write the output folder, report, return."""
    if not state.history:
        raise TrainingError(f"no epoch was trained (epochs={config.epochs})")
    model.load_state_dict(best_weights)
    test_loader = eval_loader(config, test_set, where.world, where.rank, gpu=device.type == "cuda")
    test = evaluate(config, model, norm, test_loader, len(test_set), device, where)
    test_metrics = compute_metrics(test.labels, test.predicted, labels)
    best = state.history[state.best_epoch - 1]
    result = FoldResult(fold=fold.index, status="ok", best_epoch=state.best_epoch, epochs_run=state.epoch,
                        valid={"loss": best["valid_loss"], "wa": best["valid_wa"], "ua": best["valid_ua"],
                               "wf1": best["valid_wf1"]},
                        test=test_metrics.to_dict(), test_confusion=test_metrics.confusion, labels=labels,
                        history=state.history, out_dir=str(out_dir), train_seconds=seconds, select_metric=select,
                        eval_cropped=cropped, skipped_when_built=skipped)
    if where.is_main:
        write_outputs(out_dir, config, model_description(model.config, labels, store, norm),
                      deployable_weights(best_weights, norm, model.config), result.to_dict(), test_metrics)
    logger.info("fold %d: best epoch %d (%s %.3f), test WA %.3f UA %.3f WF1 %.3f; results in %s",
                fold.index, state.best_epoch, select, best[select], test_metrics.wa, test_metrics.ua, test_metrics.wf1,
                out_dir)
    distributed.barrier(where)
    if reporter is not None:
        final = {**state.history[-1], **test_metrics.to_dict("test_"), "best_epoch": float(state.best_epoch),
                 "done": 1.0}
        reporter.report(final, None)
    return result
