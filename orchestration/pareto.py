"""Accuracy-vs-cost search: `--objectives valid_ua_mean:max,params:min` (or `latency_ms:min`) makes the sweep
multi-objective (Optuna's multi-objective TPE), and the trials no other trial beats on every objective form the
Pareto front, tagged `pareto` in MLflow and printed in the summary.

The costs are measured once per trial by the fold workers (each lane of the trial, before its first fold, on the
device it trains on; the trial reports the first it gets): `params` counts the model's parameters, `latency_ms`
times one forward pass of a fixed 1 x 300-frame input (the median of 5 after 2 warm-up passes).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

COSTS = ("params", "latency_ms")
LATENCY_FRAMES = 300  # 3 s at 100 frames/s (the demo's fbank rate), one utterance
DIRECTIONS = ("max", "min")
Objective = tuple[str, str]  # (metric, "max" | "min")


class ObjectiveError(ValueError):
    """An --objectives value that names an unknown metric or direction."""


def allowed_metrics() -> tuple[str, ...]:
    """What a sweep may optimise: validation means (never test metrics) and the measured costs."""
    from orchestration.trial import SUMMARY_KEYS

    return tuple(f"valid_{key}_mean" for key in SUMMARY_KEYS + ("loss",)) + COSTS


def parse_objectives(text: str) -> list[Objective]:
    """`valid_ua_mean:max,params:min` -> [("valid_ua_mean", "max"), ("params", "min")], or ObjectiveError."""
    objectives: list[Objective] = []
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        name, _, direction = item.partition(":")
        if name not in allowed_metrics():
            raise ObjectiveError(f"--objectives: unknown metric {name!r} (use {', '.join(allowed_metrics())})")
        if direction not in DIRECTIONS:
            raise ObjectiveError(f"--objectives: {item!r} needs a direction, {name}:max or {name}:min")
        if name in (n for n, _ in objectives):
            raise ObjectiveError(f"--objectives: {name} is named twice")
        objectives.append((name, direction))
    if not objectives:
        raise ObjectiveError("--objectives: give at least one METRIC:max|min")
    if all(name in COSTS for name, _ in objectives):
        raise ObjectiveError("--objectives: add a validation metric; costs alone would pick the smallest model")
    return objectives


def measure_costs(train_config: dict[str, Any], num_classes: int, input_dim: int, which: Iterable[str],
                  device: Any = "cpu") -> dict[str, float]:
    """The trial's model costs named in `which` (see the module docstring), the latency on `device`."""
    import torch

    from tfmamba.config import TrainConfig
    from tfmamba.model import TFMamba, count_parameters

    which = set(which)
    device = torch.device(device)
    model = TFMamba(TrainConfig.from_dict(train_config).model_config(num_classes, input_dim)).to(device).eval()
    costs: dict[str, float] = {}
    if "params" in which:
        costs["params"] = float(count_parameters(model))
    if "latency_ms" in which:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(1, LATENCY_FRAMES, input_dim, generator=generator).to(device)
        lengths = torch.tensor([LATENCY_FRAMES], device=device)
        times = []
        with torch.no_grad():
            for attempt in range(7):
                started = time.perf_counter()
                model(features, lengths)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if attempt >= 2:
                    times.append((time.perf_counter() - started) * 1000)
        costs["latency_ms"] = statistics.median(times)
    return costs


def dominates(a: dict[str, float], b: dict[str, float], objectives: list[Objective]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    better = False
    for name, direction in objectives:
        sign = 1.0 if direction == "max" else -1.0
        if sign * a[name] < sign * b[name]:
            return False
        better = better or sign * a[name] > sign * b[name]
    return better


def front(points: dict[str, dict[str, float]], objectives: list[Objective]) -> list[str]:
    """The keys of `points` (trial id -> metrics) no other point dominates, best on the first objective first."""
    usable = {k: v for k, v in points.items() if all(name in v for name, _ in objectives)}
    keep = [k for k, v in usable.items() if not any(dominates(o, v, objectives) for o in usable.values())]
    name, direction = objectives[0]
    return sorted(keep, key=lambda k: usable[k][name], reverse=direction == "max")
