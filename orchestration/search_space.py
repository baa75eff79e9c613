"""Search spaces: YAML files in `search_spaces/` turned into a Ray Tune `param_space`.

A space file names a base training config, settings fixed for every trial, the searched
parameters with their distributions, the points to try first and the early-stopping rule:

    base: paper                      # a shipped config ("paper", "demo") or a YAML path
    fixed: {epochs: 30}              # optional overrides for every trial
    params:
      cmdt_weight: {distribution: uniform, low: 0.0, high: 0.5}
      d_state: {distribution: choice, values: [16, 32, 64, 128]}
    points_to_evaluate: [paper]      # "paper", "base" or explicit {param: value} mappings
    early_stopping: {grace_period: 2, reduction_factor: 2}   # ASHA over finished folds; or false

Distributions: uniform, loguniform (low, high), int (low, high inclusive), choice (values).
Every problem raises `SearchSpaceError` naming the file and the parameter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfmamba.config import SETTINGS, TrainConfig, load_train_config
from tfmamba.errors import ConfigError

logger = logging.getLogger(__name__)

DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "int", "choice")
TOP_LEVEL_KEYS: tuple[str, ...] = ("base", "fixed", "params", "points_to_evaluate", "early_stopping", "description")
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used, with the reason."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: its distribution and bounds (or choices)."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def to_tune(self):
        """The Ray Tune domain for this parameter."""
        from ray import tune

        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.values))

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this distribution."""
        if self.distribution == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.distribution == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.distribution == "choice":
            return f"choice {list(self.values)}"
        return f"{self.distribution} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class EarlyStopping:
    """ASHA over the running mean of validation UA, one rung step per finished fold."""

    enabled: bool = True
    grace_period: int = 2
    reduction_factor: int = 2


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: base config, fixed overrides, searched params, first points."""

    name: str
    path: Path
    base: str
    fixed: dict[str, Any]
    params: dict[str, ParamSpec]
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    early_stopping: EarlyStopping = EarlyStopping()
    description: str = ""

    def base_config(self) -> TrainConfig:
        """The base config with the fixed overrides (every trial starts from it)."""
        return load_train_config(self.base, self.fixed)

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """The training config of one trial: base + fixed + the sampled `values`."""
        sampled = {k: _plain(v) for k, v in values.items() if k in self.params}
        return load_train_config(self.base, {**self.fixed, **sampled})

    def param_space(self) -> dict[str, Any]:
        """`{name: tune domain}` for `Tuner(param_space=...)`."""
        return {name: spec.to_tune() for name, spec in self.params.items()}

    def summary(self) -> str:
        lines = [f"search space {self.name} (base config {self.base!r}, fixed {self.fixed or '{}'})"]
        lines += [f"  {name}: {spec.describe()}" for name, spec in self.params.items()]
        lines += [f"  first point: {point}" for point in self.points_to_evaluate]
        return "\n".join(lines)


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A YAML file's path, or the name of a file in `search_spaces/` (with or without `.yaml`)."""
    return resolve_yaml(name_or_path, SPACES_DIR, "search space")


def resolve_yaml(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A YAML file's path, or the name of a file in the shipped `folder` (with or without `.yaml`).

    Only files count: a folder that happens to share a shipped file's name (a `demo/` data folder in
    the working directory) does not hide that file.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    for candidate in (folder / f"{name_or_path}.yaml", folder / str(name_or_path)):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.exists() else []
    raise SearchSpaceError(f"{what} {str(name_or_path)!r} not found (a YAML path, or one of: {', '.join(known)})")


def load_search_space(name_or_path: str | Path, fixed: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML file; `fixed` adds to (or replaces) its fixed settings."""
    path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML ({err})") from err
    if fixed:
        if not isinstance(data, dict):
            raise SearchSpaceError(f"{path}: a search space must be a mapping with 'base' and 'params'")
        data = {**data, "fixed": {**(data.get("fixed") or {}), **fixed}}
    try:
        return parse_search_space(data, path)
    except SearchSpaceError as err:
        raise SearchSpaceError(f"{path}: {err}") from err


def parse_search_space(data: Any, path: Path) -> SearchSpace:
    """Validate the parsed YAML of a space file (errors name the parameter)."""
    if not isinstance(data, dict):
        raise SearchSpaceError("a search space must be a mapping with 'base' and 'params'")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SearchSpaceError(f"unknown key(s) {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
    base = str(data.get("base", "paper"))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SearchSpaceError("'fixed' must be a mapping of setting: value")
    try:
        base_config = load_train_config(base, fixed)
    except ConfigError as err:
        raise SearchSpaceError(f"base config {base!r} with fixed {fixed}: {err}") from err
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SearchSpaceError("'params' must map at least one parameter to its distribution")
    params = {}
    for name, spec in raw_params.items():
        if name not in SETTINGS:
            raise SearchSpaceError(f"unknown parameter {name!r}; searchable: {', '.join(sorted(SETTINGS))}")
        if name in fixed:
            raise SearchSpaceError(f"parameter {name!r} is both fixed and searched")
        params[name] = _parse_param(name, spec, base_config)
    points = [_parse_point(point, params, i, base_config)
              for i, point in enumerate(data.get("points_to_evaluate") or [])]
    return SearchSpace(
        name=path.stem, path=path, base=base, fixed=dict(fixed), params=params,
        points_to_evaluate=points, early_stopping=_parse_early_stopping(data.get("early_stopping", True)),
        description=str(data.get("description", "")),
    )


def _parse_param(name: str, spec: Any, base_config: TrainConfig) -> ParamSpec:
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise SearchSpaceError(f"parameter {name!r}: give {{distribution: ..., ...}} (one of {', '.join(DISTRIBUTIONS)})")
    dist = spec["distribution"]
    if dist not in DISTRIBUTIONS:
        raise SearchSpaceError(f"parameter {name!r}: unknown distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if dist == "choice":
        extra = sorted(set(spec) - {"distribution", "values"})
        values = spec.get("values")
        if extra or not isinstance(values, list) or not values:
            raise SearchSpaceError(f"parameter {name!r}: choice takes a non-empty 'values' list only")
        param = ParamSpec(name, dist, values=tuple(values))
        checks = values
    else:
        extra = sorted(set(spec) - {"distribution", "low", "high"})
        if extra:
            raise SearchSpaceError(f"parameter {name!r}: unknown key(s) {extra} for {dist} (use low, high)")
        low, high = _number(name, spec, "low"), _number(name, spec, "high")
        if low >= high:
            raise SearchSpaceError(f"parameter {name!r}: low ({low:g}) must be below high ({high:g})")
        if dist == "loguniform" and low <= 0:
            raise SearchSpaceError(f"parameter {name!r}: loguniform needs low > 0, got {low:g}")
        if dist == "int" and (int(low) != low or int(high) != high):
            raise SearchSpaceError(f"parameter {name!r}: int needs whole-number bounds, got {low:g}, {high:g}")
        param = ParamSpec(name, dist, low=low, high=high)
        checks = [int(low), int(high)] if dist == "int" else [low, high]
    for value in checks:
        try:
            base_config.replace(**{name: value})
        except ConfigError as err:
            raise SearchSpaceError(f"parameter {name!r}: value {value!r} is not a valid setting ({err})") from err
    return param


def _number(name: str, spec: dict, key: str) -> float:
    value = spec.get(key)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchSpaceError(f"parameter {name!r}: '{key}' must be a finite number, got {value!r}")
    return value


def _parse_point(point: Any, params: dict[str, ParamSpec], index: int, base_config: TrainConfig) -> dict[str, Any]:
    where = f"points_to_evaluate[{index}]"
    if point in ("paper", "base"):
        config = load_train_config("paper") if point == "paper" else base_config
        settings = config.to_dict()
        point = {name: settings[name] for name in params}
    if not isinstance(point, dict):
        raise SearchSpaceError(f"{where}: give 'paper', 'base' or a mapping of parameter: value")
    missing, extra = sorted(set(params) - set(point)), sorted(set(point) - set(params))
    if missing or extra:
        raise SearchSpaceError(f"{where}: must set exactly the searched parameters (missing {missing}, unknown {extra})")
    for name, value in point.items():
        if not params[name].contains(value):
            raise SearchSpaceError(f"{where}: {name}={value!r} is outside its {params[name].describe()}")
    try:  # each value fits the base config alone; together they may not (d_model with headdim)
        base_config.replace(**point)
    except ConfigError as err:
        raise SearchSpaceError(f"{where}: {point} is not a valid setting together ({err})") from err
    return dict(point)


def _parse_early_stopping(value: Any) -> EarlyStopping:
    if value is False or value is None:
        return EarlyStopping(enabled=False)
    if value is True:
        return EarlyStopping()
    if not isinstance(value, dict) or set(value) - {"grace_period", "reduction_factor"}:
        raise SearchSpaceError("'early_stopping' must be false or {grace_period: N, reduction_factor: M}")
    stopping = EarlyStopping(True, int(value.get("grace_period", 2)), int(value.get("reduction_factor", 2)))
    if stopping.grace_period < 1 or stopping.reduction_factor < 2:
        raise SearchSpaceError("'early_stopping' needs grace_period >= 1 and reduction_factor >= 2")
    return stopping


def _plain(value: Any) -> Any:
    """numpy scalars (as Tune samples them) to Python numbers."""
    return value.item() if hasattr(value, "item") else value
