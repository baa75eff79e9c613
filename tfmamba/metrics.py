"""Evaluation metrics for speech emotion recognition: WA, UA, weighted F1 and the confusion matrix.

SER papers (TF-Mamba included) report
- WA, weighted accuracy: plain accuracy over utterances, so large classes dominate;
- UA, unweighted accuracy: the mean of per-class recalls (balanced accuracy), so every emotion counts
  the same. Only classes present in ``y_true`` are averaged: a class with no utterance in the evaluated
  split has no recall, and counting it as 0 would drag UA down for a reason unrelated to the model.
- WF1: per-class F1 averaged with support weights (classes present in ``y_true``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Metrics", "best_name", "compute_metrics", "plot_confusion", "with_current_names"]

BEST_SUFFIX = "_best"
LEGACY_BEST_PREFIX = "best_"  # the running best's name before it matched the fold summary: best_valid_ua


@dataclass(frozen=True)
class Metrics:
    """Scores of one evaluation: fractions in [0, 1], the C x C confusion matrix and per-class support."""

    wa: float
    ua: float
    wf1: float
    confusion: list[list[int]]
    labels: list[str]
    support: list[int]

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        """The three scalar scores keyed ``prefix + name``, ready for a metrics logger."""
        return {f"{prefix}wa": self.wa, f"{prefix}ua": self.ua, f"{prefix}wf1": self.wf1}


def best_name(metric: str) -> str:
    """The name of `metric` at its best epoch: `valid_ua` -> `valid_ua_best`. One name for one concept: a fold's
    running best logged per epoch, its summary metric and what a sweep averages into `valid_ua_mean`."""
    return metric + BEST_SUFFIX


def with_current_names(row: dict[str, float]) -> dict[str, float]:
    """An epoch row with the running best under `best_name`: a checkpoint written before the rename has
    `best_valid_ua` beside `valid_ua`."""
    renamed = {}
    for key, value in row.items():
        metric = key.removeprefix(LEGACY_BEST_PREFIX)
        legacy = metric != key and metric.startswith("valid_") and metric in row
        renamed[best_name(metric) if legacy else key] = value
    return renamed


def _to_index_array(values: Any, name: str) -> np.ndarray:
    """Turn a list, numpy array or torch tensor of class indices into a 1-D int64 array."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 0:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got a scalar")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class index per utterance), got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    return array.astype(np.int64)


def _label_names(labels: Sequence[str] | int) -> list[str]:
    """Class names from a list of names or a class count (names then are "0", "1", ...)."""
    if isinstance(labels, bool):
        raise ValueError("labels must be a sequence of class names or a positive class count, got a bool")
    if isinstance(labels, (int, np.integer)):
        if labels < 1:
            raise ValueError(f"labels as a class count must be >= 1, got {labels}")
        return [str(i) for i in range(int(labels))]
    if isinstance(labels, str):
        raise ValueError("labels must be a sequence of class names, not a single string")
    names = [str(name) for name in labels]
    if not names:
        raise ValueError("labels must name at least one class")
    if len(set(names)) != len(names):
        raise ValueError(f"labels must be distinct, got {names}")
    return names


def compute_metrics(y_true: Any, y_pred: Any, labels: Sequence[str] | int) -> Metrics:
    """Score predictions against references, both integer class indices in [0, C).

    ``labels`` is the list of class names (C = its length) or C itself. UA and WF1 average over the
    classes present in ``y_true`` (see the module docstring); the confusion matrix covers all C.
    """
    names = _label_names(labels)
    num_classes = len(names)
    true = _to_index_array(y_true, "y_true")
    pred = _to_index_array(y_pred, "y_pred")
    if true.size == 0 or pred.size == 0:
        raise ValueError("cannot compute metrics on an empty set of predictions (y_true or y_pred is empty)")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    for name, array in (("y_true", true), ("y_pred", pred)):
        bad = array[(array < 0) | (array >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{name} holds class index {int(bad[0])}, outside [0, {num_classes}) for labels {names}"
            )

    confusion = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    hits = np.diag(confusion)
    present = support > 0
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted): 0 where a present class is never hit
    f1 = 2 * hits[present] / (support[present] + predicted[present])
    return Metrics(
        wa=float(hits.sum() / true.size),
        ua=float(np.mean(hits[present] / support[present])),
        wf1=float(np.sum(f1 * support[present]) / true.size),
        confusion=[[int(v) for v in row] for row in confusion],
        labels=names,
        support=[int(v) for v in support],
    )


def plot_confusion(metrics: Metrics, path: str | Path, title: str | None = None) -> Path:
    """Write the confusion matrix as a PNG: counts in the cells, colour = the row-normalised rate.

    Row normalisation makes the colour the per-class recall pattern, comparable across imbalanced
    classes. Uses the Agg canvas directly, so it never touches pyplot's global backend state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(metrics.confusion, dtype=np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0)

    size = max(4.0, 0.6 * len(metrics.labels) + 2.0)
    figure = Figure(figsize=(size, size))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(metrics.labels))
    axes.set_xticks(ticks, labels=metrics.labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=metrics.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(counts.shape[0]):
        for col in range(counts.shape[1]):
            colour = "white" if rates[row, col] > 0.5 else "black"
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour)
    axes.set_title(title or f"WA {metrics.wa:.3f}  UA {metrics.ua:.3f}  WF1 {metrics.wf1:.3f}")
    figure.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=100)
    return out
