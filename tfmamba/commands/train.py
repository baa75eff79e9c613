"""`tfmamba train --fold K --config demo --out DIR`: train one cross-validation fold and write its results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from tfmamba.commands import add_device_option

DESCRIPTION = (
    "Train one fold: per epoch, training CE and CMDT losses and validation loss/WA/UA/WF1; the best epoch "
    "(on validation only) is evaluated once on the test set. Writes OUT/model.safetensors, model.json, "
    "train_config.yaml, metrics.json, history.csv, confusion.png and a checkpoint every epoch in "
    "OUT/checkpoints/last; rerunning with the same OUT resumes. Without --manifest/--cache it trains on the "
    "built-in demo corpus (made once under data/demo). The folds are the folds.json beside the manifest."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one cross-validation fold", description=DESCRIPTION)
    parser.add_argument("--manifest", default=None, help="manifest.parquet or its folder (default: the demo corpus)")
    parser.add_argument("--cache", default=None, help="feature cache folder or URI (default: the demo fbank cache)")
    parser.add_argument("--fold", type=int, default=1, help="1-based fold index (default 1)")
    parser.add_argument("--config", default="demo", help="paper, demo or a YAML file (default demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set lr=1e-3 --set epochs=5 (repeatable)")
    parser.add_argument("--out", default=None, help="output folder (default runs/train/fold-K)")
    add_device_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (in a log file it is a line every 30 s)")
    parser.set_defaults(func=run, kept_when_interrupted=kept_when_interrupted)


def output_folder(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("runs/train") / f"fold-{args.fold}"


def kept_when_interrupted(args: argparse.Namespace) -> str:
    """What an interrupted training leaves to resume from, for the line `tfmamba train` ends with."""
    from tfmamba.checkpoint import has_checkpoint, read_progress
    from tfmamba.training.outputs import CHECKPOINT_DIR

    checkpoint = output_folder(args) / CHECKPOINT_DIR
    if not has_checkpoint(checkpoint):
        return "no epoch had finished, so the same command starts from the beginning"
    return (f"the checkpoint of epoch {read_progress(checkpoint)['epoch']} is kept in {checkpoint}, "
            "and the same command goes on from it")


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tfmamba.config import load_train_config
    from tfmamba.corpora.manifest import read_manifest
    from tfmamba.errors import ConfigError, DataError, StorageError, write_failure
    from tfmamba.locations import check_writable
    from tfmamba.features.store import FeatureStore
    from tfmamba.corpora.folds import load_folds, select_folds
    from tfmamba.process_lock import LocationBusy, acquire
    from tfmamba.training.fold import train_fold
    from tfmamba.training.outputs import MODEL_JSON

    config = load_train_config(args.config, args.overrides)
    if (args.manifest is None) != (args.cache is None):
        raise ConfigError("give both --manifest and --cache, or neither (the demo data)")
    manifest_path, cache = args.manifest, args.cache
    if manifest_path is None:
        from tfmamba.demo import ensure_demo_data

        demo = ensure_demo_data(progress=not args.no_progress)
        manifest_path, cache = str(demo.manifest_dir), str(demo.cache)
    manifest = read_manifest(manifest_path)
    folds = load_folds(manifest.path.parent, manifest)
    (fold,) = select_folds(folds, [args.fold])
    store = FeatureStore.open(str(cache), manifest=manifest)
    out = output_folder(args)
    try:  # before training, not at its first checkpoint
        check_writable(out / MODEL_JSON)
    except OSError as err:
        raise StorageError(f"{out}: cannot write the fold's results there ({write_failure(err)})") from None
    try:  # two runs into one folder would overwrite each other's checkpoints
        lock = acquire(str(out), "train")
    except LocationBusy as err:
        raise DataError(f"{out} is being trained into by another process ({err}): wait for it to end, or stop it; "
                        f"then the same command resumes it") from None
    with lock, logging_redirect_tqdm():
        result = train_fold(config, fold, store, manifest=manifest, out_dir=out, device=args.device,
                            progress=not args.no_progress)
    valid, test = result.valid, result.test
    print(f"fold {result.fold}: best epoch {result.best_epoch} of {result.epochs_run} "
          f"({result.train_seconds:.0f} s)\n"
          f"  valid  WA {valid['wa']:.3f}  UA {valid['ua']:.3f}  WF1 {valid['wf1']:.3f}\n"
          f"  test   WA {test['wa']:.3f}  UA {test['ua']:.3f}  WF1 {test['wf1']:.3f}\n"
          + (f"  left out: {', '.join(f'{n} {part}' for part, n in result.skipped_when_built.items())} utterances "
             f"the feature cache's build skipped (its problems.csv says why)\n"
             if any(result.skipped_when_built.values()) else "")
          + f"results in {out}/ (model.safetensors, model.json, metrics.json, history.csv, confusion.png)")
    return 0
