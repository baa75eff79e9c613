"""Paired significance of one ablation row against another: the mean difference over the fold runs both have
(same fold, same seed), a 95% percentile-bootstrap interval of that mean, and the paired t-test's and Wilcoxon
signed-rank test's two-sided p (SciPy). See `python orchestration/report.py --help` for how to read them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
Unit = tuple[int, str]  # (fold, seed; "" for a run without a seed)


@dataclass
class Comparison:
    """A row against another on the fold runs both have: mean paired difference (this - other, as fractions),
    its 95% bootstrap interval, and the paired t-test's and Wilcoxon signed-rank test's two-sided p."""

    other: str
    n: int
    mean: float
    low: float
    high: float
    p_t: float | None
    p_wilcoxon: float | None


def paired_comparison(ours: dict[Unit, float], theirs: dict[Unit, float], other: str) -> Comparison | None:
    """Compare two rows' per-run values on their common (fold, seed) runs; None with fewer than 2 pairs."""
    from scipy import stats

    common = sorted(set(ours) & set(theirs))
    if len(common) < 2:
        return None
    a = np.array([ours[u] for u in common])
    b = np.array([theirs[u] for u in common])
    diff = a - b
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP_RESAMPLES, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    if np.all(diff == 0):
        p_t = p_w = 1.0  # identical on every run: no evidence of a difference
    else:
        with warnings.catch_warnings():  # ties or a zero-variance difference: scipy warns, the p is still right
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            p_t = _finite(stats.ttest_rel(a, b).pvalue)
            p_w = _finite(stats.wilcoxon(diff).pvalue)
    return Comparison(other, len(common), float(diff.mean()), float(low), float(high), p_t, p_w)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
