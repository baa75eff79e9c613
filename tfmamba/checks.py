"""Checks of configuration values, each raising a `ConfigError` that names the setting.

`ModelConfig` and `TrainConfig` check each of their values once, when they are built, with these.
Field types are read from the dataclass annotations (strings, as `from __future__ import annotations`
makes them); YAML 1.1 reads `1e-3` (no dot) as a string, so float fields accept numeric strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from tfmamba.errors import ConfigError


def coerce_floats(instance: Any) -> None:
    """Turn numeric strings in the float fields of a (frozen) dataclass `instance` into floats."""
    for f in fields(instance):
        value = getattr(instance, f.name)
        if f.type.startswith("float") and isinstance(value, str):
            try:
                object.__setattr__(instance, f.name, float(value))
            except ValueError:
                raise ConfigError(f"{f.name} must be a number, got {value!r}") from None


def check_types(instance: Any) -> None:
    """Check every field of a dataclass `instance` against its annotation (int, float, str, bool, optional)."""
    for f in fields(instance):
        check_type(f.name, getattr(instance, f.name), f.type)


def check_type(name: str, value: Any, annotation: str) -> None:
    """Check one value against its field annotation."""
    if value is None:
        if "None" not in annotation:
            raise ConfigError(f"{name} must not be null")
        return
    base = annotation.replace(" | None", "")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }.get(base, True)
    if not ok:
        raise ConfigError(f"{name} must be {base}, got {value!r}")
    if base == "float" and math.isnan(value):
        raise ConfigError(f"{name} must be a number, got nan")


def int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """A list of integers as a tuple (YAML and JSON give lists)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of widths, got {value!r}")
    items = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ConfigError(f"{name} must be a list of integers, got {list(items)}")
    return items


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def at_least(name: str, value: int, low: int, note: str = "") -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}{note}, got {value}")


def positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")


def in_range(name: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    above = value < high if high_open else value <= high
    if not (math.isfinite(value) and low <= value and above):
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in [{low}, {high}{bracket}, got {value}")
