"""featx.stats against known values, scipy and a seeded coverage simulation (numpy only: fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from featx.stats import (MIN_DECISIVE_N, bootstrap_interval, macro_f1, mcnemar_exact, paired_difference_from_counts,
                         paired_difference_interval, too_small_to_decide, wilson_interval)


def test_wilson_known_values():
    # 95/100: the textbook value (Newcombe 1998a, and every Wilson calculator): 0.8882 to 0.9785
    low, high = wilson_interval(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] == pytest.approx(0.72247,
                                                                                                            abs=1e-5)
    # a wider level gives a wider interval
    assert wilson_interval(95, 100, 0.99)[0] < low
    for bad in ((5, 0), (11, 10), (-1, 10)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(5, 10, 1.5)


def test_mcnemar_exact_equals_scipy_binomtest_on_the_discordant_pairs():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(5, 300))
        a = rng.random(n) < rng.uniform(0.5, 0.95)
        b = np.where(rng.random(n) < 0.7, a, rng.random(n) < 0.8)
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
        expected = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # nothing discordant
    assert mcnemar_exact([1] * 10, [0] * 10) == pytest.approx(2 * 0.5 ** 10)


def test_newcombe_paired_interval_known_value():
    # Newcombe (1998b), Stat Med 17:2635, example (a): table 36, 12, 2, 0 -> method 10: 0.0569 to 0.3404
    d = paired_difference_from_counts(36, 12, 2, 0)
    assert d.difference == pytest.approx(0.2)
    assert (round(d.low, 4), round(d.high, 4)) == (0.0569, 0.3404)
    assert d.excludes_zero and d.n == 50 and d.p_value == pytest.approx(binomtest(12, 14, 0.5).pvalue)
    # the vector form counts the same table; a minus b and b minus a mirror each other
    a = [1] * 36 + [1] * 12 + [0] * 2
    b = [1] * 36 + [0] * 12 + [1] * 2
    assert paired_difference_interval(a, b) == d
    back = paired_difference_interval(b, a)
    assert (back.low, back.high) == pytest.approx((-d.high, -d.low))
    # identical predictions: a zero difference whose interval still has a width
    same = paired_difference_from_counts(90, 0, 0, 10)
    assert same.difference == 0 and same.low < 0 < same.high and same.p_value == 1.0
    with pytest.raises(ValueError, match="one length"):
        paired_difference_interval([1, 0], [1])


def test_paired_interval_covers_the_true_difference_in_a_seeded_simulation():
    # two equally good models (accuracy 0.85, errors correlated 0.4) on 150 images, 400 trials
    rng = np.random.default_rng(1)
    p, rho = 0.85, 0.4
    both = p * p + rho * p * (1 - p)
    cells = np.array([both, p - both, p - both, 1 - 2 * p + both])
    tables = rng.multinomial(150, cells, size=400)
    results = [paired_difference_from_counts(*map(int, t)) for t in tables]
    coverage = np.mean([r.low <= 0 <= r.high for r in results])
    false_positive = np.mean([r.p_value < 0.05 for r in results])
    assert 0.92 <= coverage <= 0.98, coverage
    assert false_positive <= 0.07, false_positive
    # and a real 8-point difference is found most of the time
    cells = np.array([0.80, 0.10, 0.02, 0.08])
    found = [paired_difference_from_counts(*map(int, t)).excludes_zero for t in rng.multinomial(300, cells, size=200)]
    assert np.mean(found) > 0.9


def test_macro_f1_and_bootstrap():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.8, y, rng.integers(0, 5, 300))  # class 4 only predicted
    assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    low, high = bootstrap_interval(y, pred)
    assert low < macro_f1(y, pred) < high and high - low < 0.2
    assert bootstrap_interval(y, pred) == (low, high)  # seeded: same input, same interval
    assert bootstrap_interval(y, pred, seed=1) != (low, high)
    plain = bootstrap_interval(y, pred, lambda t, p: float(np.mean(t == p)), stratified=False)
    wilson = wilson_interval(int(np.sum(y == pred)), 300)
    assert plain == pytest.approx(wilson, abs=0.02)  # bootstrap of accuracy ≈ Wilson at n = 300
    with pytest.raises(ValueError, match="same length"):
        bootstrap_interval([0, 1], [0])


def test_too_small_to_decide():
    small = paired_difference_from_counts(35, 2, 1, 2)  # 40 images, 2.5 points = one image
    assert not small.excludes_zero and too_small_to_decide(40, small)
    clear = paired_difference_from_counts(28, 10, 0, 2)  # 40 images, 25 points: significant anyway
    assert clear.excludes_zero and not too_small_to_decide(40, clear)
    assert too_small_to_decide(MIN_DECISIVE_N - 1) and not too_small_to_decide(MIN_DECISIVE_N)
