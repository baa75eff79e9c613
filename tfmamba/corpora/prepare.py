"""Shared driver of `tfmamba prepare`: build once, write the outputs, skip when up to date.

Every corpus builder returns a `BuildResult`; `prepare_corpus` writes
`manifest.parquet`, `folds.json` and `problems.csv` into the output folder and records a
fingerprint of the options in the manifest metadata. A rerun with the same options
reuses the outputs; changed options (or a missing or stale file) rebuild them, and the
log says which. Unlike a skip that only checks that files exist, this never silently
reuses outputs made with other options.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tfmamba.corpora.folds import FOLDS_NAME, Fold, load_folds, make_folds, save_folds
from tfmamba.corpora.manifest import (
    MANIFEST_NAME,
    PROBLEMS_NAME,
    SPLITS,
    Manifest,
    Problem,
    SkipLog,
    read_manifest,
    read_manifest_metadata,
    read_problems,
    reason_kind,
    validate_table,
    write_manifest,
    write_problems,
)
from tfmamba.errors import DataError

logger = logging.getLogger(__name__)

PREPARE_VERSION = "1"


@dataclass
class BuildResult:
    """What a corpus builder found: usable rows, class order, skipped files, dropped labels."""

    table: pd.DataFrame
    labels: list[str]
    problems: list[Problem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class PrepareResult:
    """The written (or reused) outputs of one `prepare` run."""

    manifest: Manifest
    folds: list[Fold]
    problems: list[Problem]
    dropped: dict[str, int]
    out_dir: Path
    reused: bool

    @property
    def paths(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in (MANIFEST_NAME, FOLDS_NAME, PROBLEMS_NAME)}


def options_fingerprint(corpus: str, options: Mapping[str, Any]) -> str:
    """SHA-256 of the corpus name, the options and the builder version."""
    blob = json.dumps({"corpus": corpus, "options": dict(options), "version": PREPARE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable(out_dir: Path, fingerprint: str, options: Mapping[str, Any]) -> bool:
    names = (MANIFEST_NAME, FOLDS_NAME, PROBLEMS_NAME)
    missing = [name for name in names if not (out_dir / name).exists()]
    if len(missing) == len(names):
        logger.info("no previous outputs in %s, preparing", out_dir)
        return False
    if missing:
        logger.info("previous outputs incomplete (missing %s), preparing again", ", ".join(missing))
        return False
    try:
        metadata = read_manifest_metadata(out_dir)
    except DataError as err:
        logger.info("previous manifest unreadable (%s), preparing again", err)
        return False
    if metadata.get("options_fingerprint") != fingerprint:
        saved = json.loads(metadata.get("prepare_options", "{}"))
        changed = sorted(k for k in set(saved) | set(options) if saved.get(k) != _jsonable(options).get(k))
        logger.info("options changed since the previous run (%s), preparing again", ", ".join(changed) or "version")
        return False
    try:
        load_folds(out_dir)
    except DataError as err:
        logger.info("%s, preparing again", err)
        return False
    return True


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(options), default=str))


def prepare_corpus(
    corpus: str,
    build: Callable[[], BuildResult],
    out_dir: str | Path,
    options: Mapping[str, Any],
    valid_fraction: float = 0.1,
    fold_seed: int = 0,
    force: bool = False,
) -> PrepareResult:
    """Run `build` unless `out_dir` already holds outputs made with the same options."""
    out_dir = Path(out_dir).resolve()
    options = {**dict(options), "valid_fraction": valid_fraction, "fold_seed": fold_seed}
    fingerprint = options_fingerprint(corpus, options)
    if not force and _reusable(out_dir, fingerprint, options):
        logger.info("preparation completed in a previous run with the same options, skipping (%s)", out_dir)
        manifest = read_manifest(out_dir)
        return PrepareResult(
            manifest=manifest,
            folds=load_folds(out_dir, manifest),
            problems=read_problems(out_dir / PROBLEMS_NAME),
            dropped=json.loads(manifest.metadata.get("dropped", "{}")),
            out_dir=out_dir,
            reused=True,
        )
    built = build()
    out_dir.mkdir(parents=True, exist_ok=True)
    _log_problems(built.problems)
    write_problems(built.problems, out_dir / PROBLEMS_NAME)
    if len(built.table) == 0:
        raise DataError(
            f"corpus {corpus!r}: empty manifest, no usable utterances "
            f"({len(built.problems)} problems listed in {out_dir / PROBLEMS_NAME})"
        )
    # the folds are made before anything is written: a table that makes none leaves an earlier manifest as it was
    target = out_dir / MANIFEST_NAME
    validate_table(built.table, built.labels, str(target))
    folds = make_folds(Manifest(built.table.reset_index(drop=True), corpus, list(built.labels), target),
                       valid_fraction=valid_fraction, seed=fold_seed)
    manifest = write_manifest(
        built.table,
        out_dir,
        corpus=corpus,
        labels=built.labels,
        extra_metadata={
            "options_fingerprint": fingerprint,
            "prepare_options": json.dumps(_jsonable(options), sort_keys=True),
            "dropped": json.dumps(built.dropped, sort_keys=True),
        },
    )
    save_folds(folds, out_dir / FOLDS_NAME, manifest)
    return PrepareResult(manifest, folds, built.problems, dict(built.dropped), out_dir, reused=False)


def _log_problems(problems: list[Problem]) -> None:
    """A few examples of each kind of skip; the full list is in problems.csv."""
    log = SkipLog(logger)
    for problem in problems:
        log.skipped(problem.utt_id or problem.path, problem.reason)
    log.close()


def format_summary(result: PrepareResult) -> str:
    """Human-readable class order, counts per label and split/session, skips with reasons, output paths."""
    table = result.manifest.table
    lines = [
        f"corpus {result.manifest.corpus}: {len(table)} utterances, "
        f"{table['duration'].sum() / 3600:.2f} h"
        + (" (reused outputs of a previous run with the same options)" if result.reused else ""),
        "classes, in the model's output order: "
        + ", ".join(f"{index} {label}" for index, label in enumerate(result.manifest.labels)),
    ]
    group = "split" if "split" in table.columns else "session"
    counts = table.groupby([group, "label"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=result.manifest.labels, fill_value=0)
    if group == "split":
        counts = counts.reindex([s for s in SPLITS if s in counts.index])
    counts.loc["total"] = counts.sum()
    lines.append(counts.to_string())
    if result.dropped:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(result.dropped.items()))
        lines.append(f"dropped labels (not in the class set): {dropped}")
    reasons = Counter(reason_kind(p.reason) for p in result.problems)
    lines.append(f"skipped files: {len(result.problems)} (listed in {PROBLEMS_NAME})")
    lines.extend(f"  {n} x {reason}" for reason, n in reasons.most_common())
    for fold in result.folds:
        lines.append(f"fold {fold.index} ({fold.name}): train {len(fold.train)}, valid {len(fold.valid)}, test {len(fold.test)}")
    lines.extend(f"{name}: {path}" for name, path in result.paths.items())
    return "\n".join(lines)
