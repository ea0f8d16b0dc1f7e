"""Uncertainty of a score and of a difference between two models (numpy and scipy only, no Keras).

Shared by ``featx evaluate`` (intervals of one model's scores), ``featx compare`` (is fine-tuning
really better than the best probe?) and any later command that compares models on one split.

- :func:`wilson_interval`: a proportion (accuracy), Wilson score interval: close to nominal
  coverage even for small n and accuracies near 1, where the normal approximation breaks down.
- :func:`bootstrap_interval`: any score of (y_true, y_pred), seeded percentile bootstrap, by
  default stratified (each class resampled to its own size), so every resample has every class
  and a macro average is always over the same classes.
- :func:`mcnemar_exact`: exact McNemar test of two models' paired correctness: a two-sided
  binomial test (``scipy.stats.binomtest``) of the discordant pairs against 1/2.
- :func:`paired_difference_interval`: the difference of two paired accuracies with Newcombe's
  hybrid score interval (Newcombe 1998, method 10): Wilson intervals of both accuracies combined
  with the correlation of the paired outcomes. Its coverage is checked by simulation in
  ``benchmarks/verdict_coverage.py`` and in the tests.
- :func:`too_small_to_decide`: the rule for "too few held-out images": a difference that is not
  significant, on fewer than :data:`MIN_DECISIVE_N` images.

>>> [round(v, 4) for v in wilson_interval(95, 100)]
[0.8882, 0.9785]
>>> round(mcnemar_exact([1, 1, 0, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0]), 4)
0.0703
>>> diff = paired_difference_interval([1] * 90 + [0] * 10, [1] * 85 + [0] * 15)
>>> round(diff.difference, 2), [round(v, 4) for v in (diff.low, diff.high)], diff.excludes_zero
(0.05, [0.0047, 0.1046], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["CONFIDENCE", "MIN_DECISIVE_N", "PairedDifference", "bootstrap_interval", "macro_f1",
           "mcnemar_exact", "paired_difference_from_counts", "paired_difference_interval",
           "too_small_to_decide", "wilson_interval"]

CONFIDENCE = 0.95
# Below 100 held-out images one image moves accuracy by more than a point, and the 95% interval of
# a paired difference between two ~90%-accurate models is ±6 to ±9 points wide at n = 100 (±10 to
# ±14 at n = 40; benchmarks/verdict_coverage.py): an evaluation that
# small cannot tell the usual probe-vs-fine-tune gaps (a few points) from noise, so a difference
# it does not find significant is reported as "too few images to decide" rather than as a tie.
MIN_DECISIVE_N = 100


@lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_scipy_stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``.

    >>> wilson_interval(0, 10)[0], round(wilson_interval(10, 10)[1], 6)
    (0.0, 1.0)
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int | None = None) -> float:
    """Macro F1 over the classes present in y_true or y_pred (as scikit-learn's, zero_division=0).

    >>> macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    0.7333333333333334
    """
    k = int(n_labels or max(int(np.max(y_true)), int(np.max(y_pred))) + 1)
    tp = np.bincount(y_true[y_true == y_pred], minlength=k).astype(float)
    true_count = np.bincount(y_true, minlength=k)
    pred_count = np.bincount(y_pred, minlength=k)
    denom = true_count + pred_count
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def bootstrap_interval(
    y_true: Any, y_pred: Any, statistic: Callable[[np.ndarray, np.ndarray], float] = macro_f1, *,
    confidence: float = CONFIDENCE, n_resamples: int = 1000, stratified: bool = True, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(y_true, y_pred)``, seeded (same input, same interval).

    ``stratified``: resample within each true class, keeping the class counts (the evaluation's
    design); else resample all pairs together. A score without a single error resamples to itself
    (an interval of zero width): there, read the Wilson interval of the accuracy.

    >>> y = np.repeat([0, 1, 2], 30); p = y.copy(); p[::7] = (p[::7] + 1) % 3
    >>> [round(v, 3) for v in bootstrap_interval(y, p)]
    [0.767, 0.922]
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError("y_true and y_pred must be non-empty 1-D arrays of the same length")
    _z(confidence)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)] if stratified else [np.arange(y_true.size)]
    values = np.empty(n_resamples)
    for r in range(n_resamples):
        rows = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        values[r] = statistic(y_true[rows], y_pred[rows])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _paired_counts(a_correct: Any, b_correct: Any) -> tuple[int, int, int, int]:
    """(both right, only a right, only b right, both wrong) of two aligned 0/1 vectors."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired correctness must be two non-empty 1-D arrays of one length, got "
                         f"{a.shape} and {b.shape}")
    return int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b)), int(np.sum(~a & ~b))


def mcnemar_exact(a_correct: Any, b_correct: Any) -> float:
    """Two-sided exact McNemar p-value: are the images only a gets right as common as those only b does?

    1.0 when no image is discordant (nothing tells the models apart).
    """
    _, only_a, only_b, _ = _paired_counts(a_correct, b_correct)
    return _mcnemar_from_counts(only_a, only_b)


def _mcnemar_from_counts(only_a: int, only_b: int) -> float:
    # scipy.stats.binomtest(only_a, only_a + only_b, 0.5).pvalue, in closed form: the null
    # distribution is symmetric, so the two-sided p is twice the smaller tail (at most 1). Same
    # number (tested), ten times faster, which the coverage simulation needs.
    if only_a + only_b == 0:
        return 1.0
    return float(min(1.0, 2 * _scipy_stats.binom.cdf(min(only_a, only_b), only_a + only_b, 0.5)))


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of a minus accuracy of b on the same n images, its interval and the paired test."""

    difference: float
    low: float
    high: float
    p_value: float  # exact McNemar
    n: int
    only_a: int  # images a gets right and b wrong
    only_b: int
    confidence: float = CONFIDENCE
    method: str = "Newcombe hybrid score (paired)"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"difference": self.difference, "low": self.low, "high": self.high, "p_value": self.p_value,
                "n": self.n, "only_a": self.only_a, "only_b": self.only_b, "confidence": self.confidence,
                "method": self.method, "test": "exact McNemar"}


def paired_difference_interval(a_correct: Any, b_correct: Any, confidence: float = CONFIDENCE) -> PairedDifference:
    """Newcombe's interval (method 10) for acc(a) - acc(b) from paired per-image correctness, plus McNemar.

    The Wilson intervals (l1, u1) and (l2, u2) of both accuracies are combined with phi, the
    correlation of the 2x2 table: low = d - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2),
    high likewise; positively correlated errors (the usual case) narrow the interval.
    """
    return paired_difference_from_counts(*_paired_counts(a_correct, b_correct), confidence=confidence)


def paired_difference_from_counts(both: int, only_a: int, only_b: int, neither: int, *,
                                  confidence: float = CONFIDENCE) -> PairedDifference:
    """:func:`paired_difference_interval` from the paired 2x2 table: images both models get right, only
    a, only b, neither."""
    n = both + only_a + only_b + neither
    if n <= 0 or min(both, only_a, only_b, neither) < 0:
        raise ValueError(f"a paired table needs non-negative counts and n > 0, got {(both, only_a, only_b, neither)}")
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, confidence)
    l2, u2 = wilson_interval(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    d = p1 - p2
    return PairedDifference(d, max(-1.0, d - below), min(1.0, d + above), _mcnemar_from_counts(only_a, only_b),
                            n, only_a, only_b, confidence)


def too_small_to_decide(n: int, difference: PairedDifference | None = None) -> bool:
    """True when ``n`` held-out images are too few for a "no difference" to mean anything.

    A significant difference (interval excluding 0) is reported whatever n; below
    :data:`MIN_DECISIVE_N` images a non-significant one is "too few images to decide".
    """
    if difference is not None and difference.excludes_zero:
        return False
    return n < MIN_DECISIVE_N


def decision(diff: PairedDifference) -> str:
    """What a paired comparison may claim: "significant" (the interval excludes 0), "too small" (fewer
    than MIN_DECISIVE_N images and not significant) or "not significant"."""
    if diff.excludes_zero:
        return "significant"
    return "too small" if too_small_to_decide(diff.n, diff) else "not significant"
