"""Ablation grids (the paper's Tables II and III): rows of fixed settings, read from `grids/<table>.yaml`.

A grid file names its table, the base training config (`base`, or `demo_base` for the demo
corpus), settings fixed for every row and the rows, each `name: {setting: value, ...}`:

    table: table3
    base: paper
    demo_base: demo
    rows:
      baseline: {variant: baseline, cmdt_weight: 0.0}
      tf_cmdt:  {variant: tf_cmdt,  cmdt_weight: 0.1}

A row may also name its own feature cache (`cache`, a path relative to the caches root, or
absolute, or a URI), the `extractor` that makes it (`tfmamba features --extractor ...`; with
--demo `fbank` or `tiny:wavlm|hubert|wav2vec2`, made offline) and the paper's row it is
compared with (`paper_row`, default: its name). `demo_rows` replace `rows` with --demo.
The grid becomes a `SearchSpace` whose params are the row settings, so the sweep's trial
machinery runs it unchanged, and a Tune `param_space` that grid-searches the row names
(`row`) and derives each row's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from orchestration.search_space import EarlyStopping, ParamSpec, SearchSpace, SearchSpaceError, resolve_yaml
from orchestration.trial import ROW_KEY
from tfmamba.config import SETTINGS, load_train_config
from tfmamba.errors import ConfigError
from tfmamba.locations import is_uri

GRID_KEYS = ("description", "table", "base", "demo_base", "fixed", "demo_fixed", "rows", "demo_rows")
ROW_KEYS = ("cache", "extractor", "paper_row")  # about a row's data and its paper row, not training settings
GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"


@dataclass(frozen=True)
class RowInfo:
    """What a row says besides its training settings."""

    cache: str | None = None
    extractor: str | None = None
    paper_row: str | None = None


@dataclass(frozen=True)
class Grid:
    """A validated ablation grid: its table name, `{row: {setting: value}}` and each row's `RowInfo`."""

    table: str
    path: Path
    rows: dict[str, dict[str, Any]]
    space: SearchSpace
    info: dict[str, RowInfo]

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: a grid over the row names (`row`); each row's settings follow its name."""
        from ray import tune

        space: dict[str, Any] = {ROW_KEY: tune.grid_search(list(self.rows))}
        for key in self.space.params:
            space[key] = tune.sample_from(RowSetting(key, {name: row[key] for name, row in self.rows.items()}))
        return space

    def select(self, names: list[str]) -> Grid:
        """The grid with only the rows `names` (in the file's order; spaces around a name ignored)."""
        names = [name.strip() for name in names if name.strip()]
        if not names:
            raise SearchSpaceError(f"no rows given to run; the rows of {self.path.name}: {list(self.rows)}")
        unknown = sorted(set(names) - set(self.rows))
        if unknown:
            raise SearchSpaceError(f"no row(s) {unknown} in {self.path.name}; its rows: {list(self.rows)}")
        keep = [name for name in self.rows if name in names]
        return replace(self, rows={n: self.rows[n] for n in keep}, info={n: self.info[n] for n in keep})

    def row_caches(self, root: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """`{row: cache}` for the rows that name a cache: relative ones under `root`, then `overrides` on top."""
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(self.rows))
        if unknown:
            raise SearchSpaceError(f"cache given for unknown row(s) {unknown}; rows: {list(self.rows)}")
        caches = {name: _under(root, info.cache) for name, info in self.info.items() if info.cache}
        return caches | {name: _under(root, cache) for name, cache in overrides.items()}


def _under(root: str, cache: str) -> str:
    if is_uri(cache) or Path(cache).is_absolute():
        return cache
    if is_uri(root):
        return f"{root.rstrip('/')}/{cache}"
    return str((Path(root) / cache).resolve())


class RowSetting:
    """`tune.sample_from` callable: the setting `key` of the row Tune picked."""

    def __init__(self, key: str, by_row: dict[str, Any]) -> None:
        self.key = key
        self.by_row = by_row

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.by_row[config[ROW_KEY]]


def load_grid(name_or_path: str | Path, demo: bool, overrides: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file (a name in `grids/` or a YAML path); `demo` picks `demo_base`/`demo_fixed`,
    `overrides` fix more settings."""
    path = resolve_yaml(name_or_path, GRIDS_DIR, "grid")
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
        raise SearchSpaceError("a grid is a mapping with 'rows' (name: {setting: value, ...})")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise SearchSpaceError(f"unknown key(s) {unknown}; allowed: {list(GRID_KEYS)}")
    base = str(data.get("demo_base" if demo else "base", "demo" if demo else "paper"))
    fixed = {**(data.get("fixed") or {}), **((data.get("demo_fixed") or {}) if demo else {}), **overrides}
    raw_rows = data.get("demo_rows") if demo and data.get("demo_rows") else data["rows"]
    if not isinstance(raw_rows, dict) or not all(isinstance(row or {}, dict) for row in raw_rows.values()):
        raise SearchSpaceError("rows must map each row name to {setting: value, ...}")
    rows = {str(name): {k: v for k, v in (row or {}).items() if k not in ROW_KEYS} for name, row in raw_rows.items()}
    info = {str(name): RowInfo(**{k: None if v is None else str(v) for k, v in (row or {}).items() if k in ROW_KEYS})
            for name, row in raw_rows.items()}
    keys = set().union(*rows.values())
    if sorted(keys - set(SETTINGS)):
        raise SearchSpaceError(f"unknown setting(s) {sorted(keys - set(SETTINGS))} in rows (row keys: {list(ROW_KEYS)})")
    base_config = load_train_config(base, fixed)
    base_settings = base_config.to_dict()
    params = {}
    for key in sorted(keys):
        values = [row.setdefault(key, base_settings[key]) for row in rows.values()]
        params[key] = ParamSpec(key, "choice", values=tuple(dict.fromkeys(values)))
    for name, row in rows.items():
        try:
            base_config.replace(**row)  # each row checked once, here
        except ConfigError as err:
            raise ConfigError(f"row {name!r}: {err}") from err
    fixed = {k: v for k, v in fixed.items() if k not in params}
    space = SearchSpace(name=path.stem, path=path, base=base, fixed=fixed, params=params,
                        early_stopping=EarlyStopping(enabled=False), description=str(data.get("description", "")))
    return Grid(str(data.get("table", path.stem)), path, rows, space, info)
