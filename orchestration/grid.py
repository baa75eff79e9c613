"""Ablation grids (the paper's Table III): rows of fixed settings, read from `search_spaces/<table>.yaml`.

A grid file names its table, the base training config (`base`, or `demo_base` for the demo
corpus), settings fixed for every row and the rows, each `name: {variant: ..., setting: value}`:

    table: table3
    base: paper
    demo_base: demo
    rows:
      baseline: {variant: baseline, cmdt_weight: 0.0}
      tf_cmdt:  {variant: tf_cmdt,  cmdt_weight: 0.1}

Each row's variant is unique (it names the row in Tune and MLflow). The grid becomes a
`SearchSpace` whose params are the row settings, so the sweep's trial machinery runs it
unchanged, and a Tune `param_space` that grid-searches the variant and derives the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from orchestration.search_space import EarlyStopping, ParamSpec, SearchSpace, SearchSpaceError, resolve_space_path
from tfmamba.config import TrainConfig, load_train_config
from tfmamba.errors import ConfigError

GRID_KEYS = ("description", "table", "base", "demo_base", "fixed", "demo_fixed", "rows")


@dataclass(frozen=True)
class Grid:
    """A validated ablation grid: its table name and `{row: {setting: value}}` (each with a variant)."""

    table: str
    path: Path
    rows: dict[str, dict[str, Any]]
    space: SearchSpace

    def row_of(self, variant: str) -> str:
        """The row trained with `variant`."""
        return next(name for name, row in self.rows.items() if row["variant"] == variant)

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: a grid over the rows' variants; the other settings follow the variant."""
        from ray import tune

        space: dict[str, Any] = {"variant": tune.grid_search([row["variant"] for row in self.rows.values()])}
        for key in self.space.params:
            if key != "variant":
                space[key] = tune.sample_from(RowSetting(key, {r["variant"]: r[key] for r in self.rows.values()}))
        return space


class RowSetting:
    """`tune.sample_from` callable: the setting `key` of the row whose variant Tune picked."""

    def __init__(self, key: str, by_variant: dict[str, Any]) -> None:
        self.key = key
        self.by_variant = by_variant

    def __call__(self, spec: Any) -> Any:
        return self.by_variant[spec["config"]["variant"]]


def load_grid(name_or_path: str | Path, demo: bool, overrides: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file; `demo` picks `demo_base`/`demo_fixed`, `overrides` fix more settings."""
    path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML ({err})") from err
    try:
        return _parse(data, path, demo, overrides or {})
    except (SearchSpaceError, ConfigError) as err:
        raise SearchSpaceError(f"{path}: {err}") from err


def _parse(data: Any, path: Path, demo: bool, overrides: dict[str, Any]) -> Grid:
    if not isinstance(data, dict) or not isinstance(data.get("rows"), dict) or not data["rows"]:
        raise SearchSpaceError("a grid is a mapping with 'rows' (name: {variant: ..., ...})")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise SearchSpaceError(f"unknown key(s) {unknown}; allowed: {list(GRID_KEYS)}")
    base = str(data.get("demo_base" if demo else "base", "demo" if demo else "paper"))
    fixed = {**(data.get("fixed") or {}), **((data.get("demo_fixed") or {}) if demo else {}), **overrides}
    rows = {str(name): dict(row or {}) for name, row in data["rows"].items()}
    known = {f.name for f in fields(TrainConfig)}
    keys = set().union(*rows.values())
    if "variant" not in keys or any("variant" not in row for row in rows.values()):
        raise SearchSpaceError("every row needs a 'variant'")
    if sorted(keys - known):
        raise SearchSpaceError(f"unknown setting(s) {sorted(keys - known)} in rows")
    variants = [row["variant"] for row in rows.values()]
    if len(set(variants)) != len(variants):
        raise SearchSpaceError(f"each row needs its own variant, got {variants}")
    base_config = load_train_config(base, fixed)
    params = {}
    for key in sorted(keys):
        values = [row.get(key, getattr(base_config, key)) for row in rows.values()]
        for name, row in rows.items():
            row.setdefault(key, getattr(base_config, key))
            base_config.replace(**row)  # raises ConfigError naming the bad setting
        params[key] = ParamSpec(key, "choice", values=tuple(dict.fromkeys(values)))
    fixed = {k: v for k, v in fixed.items() if k not in params}
    space = SearchSpace(name=path.stem, path=path, base=base, fixed=fixed, params=params,
                        early_stopping=EarlyStopping(enabled=False), description=str(data.get("description", "")))
    return Grid(str(data.get("table", path.stem)), path, rows, space)
