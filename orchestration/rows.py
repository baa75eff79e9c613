"""The rows of an ablation grid (Tables III and II): their feature caches, parameter counts and MLflow labels.

A Table II row trains on its own pre-trained model's cache (under --caches-root, or --row-cache);
the demo makes the caches it can make offline. Each row's run is named after the row and tagged
with its paper row and features once the grid has run, and carries its parameter count.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from orchestration import mlflow_runs
from orchestration.console import trial_label
from orchestration.sweep_data import SweepData, cache_exists, check_cache, ensure_demo_caches
from orchestration.grid import Grid
from orchestration.search_space import SearchSpaceError
from orchestration.trial import ROW_KEY

RowCaches = dict[str, tuple[str, dict[str, object]]]  # row -> (cache location, its identity)


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """`--seeds`: a count N (seeds 0..N-1) or a comma list; none = each fold once with the config's seed. A value
    that names no seed (`--seeds "$SEEDS"` with SEEDS unset) is an error, not a silent default."""
    if text is None:
        return ()
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: give a count like 5 or seeds like 0,1,2") from None
    if "," not in text and seeds:
        seeds = tuple(range(seeds[0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def row_label(number: int, config: dict[str, Any]) -> str:
    """`tf_cmdt  λ=0.10`: a row in the progress lines, by its name and the settings that do not repeat it."""
    row = str(config.get(ROW_KEY, f"row{number}"))
    return f"{row}  {trial_label(None, {k: v for k, v in config.items() if k != ROW_KEY and v != row})}".rstrip()


def parse_row_caches(items: list[str]) -> dict[str, str]:
    """`--row-cache ROW=CACHE` items as a dict."""
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (row, sep, cache) in zip(items, pairs) if not (row and sep and cache)]
    if bad:
        raise SystemExit(f"--row-cache {bad[0]!r}: give ROW=CACHE")
    return {row: cache for row, _, cache in pairs}


def row_caches(grid: Grid, data: SweepData, caches_root: str | None, overrides: list[str], demo: bool) -> RowCaches:
    """Every row's checked cache and its identity: its own (under `caches_root`, or --row-cache), else --cache.
    With `demo` the caches the demo makes offline are made first; a missing cache exits with the command to make it."""
    root = caches_root or (str(Path(data.cache).parent) if data.cache else data.manifest_dir)
    try:
        own = grid.row_caches(root, parse_row_caches(overrides))
    except SearchSpaceError as err:
        raise SystemExit(f"--row-cache: {err}") from None
    if demo:
        ensure_demo_caches(data.manifest_dir, own, {n: i.extractor for n, i in grid.info.items()},
                           Path(data.manifest_dir).parent / "models")
    missing = {row: cache for row, cache in own.items() if not cache_exists(cache)}
    if missing:
        hints = "\n".join(f"  {row}: tfmamba features --manifest {shlex.quote(str(data.manifest_dir))} --extractor "
                          f"{grid.info[row].extractor or 'EXTRACTOR'} --out {shlex.quote(cache)}"
                          for row, cache in missing.items())
        raise SystemExit(f"no feature cache for row(s) {list(missing)}; make them (or pick rows with --rows, "
                         f"or point --caches-root / --row-cache at them):\n{hints}")
    without = [row for row in grid.rows if row not in own]
    if without and not data.cache:
        raise SystemExit(f"row(s) {without} name no cache of their own: give --cache")
    checked = {row: check_cache(cache, data.manifest_dir, f"row {row}'s cache") for row, cache in own.items()}
    return {row: checked.get(row, (data.cache, data.cache_metadata)) for row in grid.rows}


def row_parameters(grid: Grid, data: SweepData, caches: RowCaches) -> dict[str, int]:
    """Trainable parameters of each row's network for this corpus's classes and its cache's feature dimension."""
    from tfmamba.corpora.manifest import read_manifest_metadata
    from tfmamba.model import TFMamba, count_parameters

    num_classes = len(json.loads(read_manifest_metadata(data.manifest_dir)["labels"]))
    return {name: count_parameters(TFMamba(grid.space.trial_config(row).model_config(
        num_classes, int(caches[name][1]["dim"])))) for name, row in grid.rows.items()}


def label_rows(grid: Grid, trials, params: dict[str, int], caches: RowCaches, uri: str) -> None:
    """Name each trial's run after its row, tag its paper row and features, log the row's parameter count."""
    for trial in trials:
        if trial.run_id is None:
            continue
        row = mlflow_runs.get_run(uri, trial.run_id).data.params.get(ROW_KEY)
        if row not in grid.rows:
            continue
        cache, meta = caches[row]
        extractor = str(meta.get("extractor") or "?")
        features = f"{grid.info[row].extractor or Path(extractor).name} ({meta.get('dim')})"
        mlflow_runs.set_tags(uri, trial.run_id, {"row": row, "mlflow.runName": row, "features": features,
                                                 "paper_row": grid.info[row].paper_row or row, "cache": cache})
        mlflow_runs.log_metrics(uri, trial.run_id, {"n_params": params[row]})
