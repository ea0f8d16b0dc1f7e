"""Does the compare verdict's interval cover the truth, and how often does McNemar cry wolf?

Simulates two classifiers judged on the same n images. Each image is a paired outcome (a right?,
b right?) drawn with accuracies p_a, p_b and a correlation rho between the two models' correctness
(real models of one backbone err on the same hard images: rho 0.3-0.7 is typical). For each
setting it reports

- coverage: the fraction of 95% Newcombe intervals (featx.stats.paired_difference_from_counts)
  that contain the true difference p_a - p_b (target about 0.95);
- McNemar at 0.05: the fraction of exact McNemar p-values below 0.05; with p_a == p_b this is the
  false-positive rate (target at most 0.05; the exact test is conservative, so usually below);
- "significant": the fraction of verdicts whose interval excludes 0 (the headline's rule).

    python benchmarks/verdict_coverage.py [--trials 1000] [--seed 0]

Runs in seconds (numpy + scipy only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from featx.stats import paired_difference_from_counts


def paired_table_probabilities(p_a: float, p_b: float, rho: float) -> np.ndarray:
    """(both right, only a, only b, neither) with marginals p_a, p_b and correlation rho of correctness."""
    both = p_a * p_b + rho * np.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    cells = np.array([both, p_a - both, p_b - both, 1 - p_a - p_b + both])
    if (cells < -1e-12).any():
        raise ValueError(f"no joint distribution with p_a={p_a}, p_b={p_b}, rho={rho}")
    return np.clip(cells, 0, None) / np.clip(cells, 0, None).sum()


def simulate(n: int, p_a: float, p_b: float, rho: float, trials: int, rng: np.random.Generator) -> dict:
    tables = rng.multinomial(n, paired_table_probabilities(p_a, p_b, rho), size=trials)
    results = [paired_difference_from_counts(*map(int, t)) for t in tables]
    truth = p_a - p_b
    return {
        "coverage": float(np.mean([r.low <= truth <= r.high for r in results])),
        "mcnemar_005": float(np.mean([r.p_value < 0.05 for r in results])),
        "significant": float(np.mean([r.excludes_zero for r in results])),
        "mean_width_points": float(np.mean([r.high - r.low for r in results]) * 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"{'n':>5} {'p_a':>5} {'p_b':>5} {'rho':>4}  {'coverage':>8} {'McNemar<.05':>11} "
          f"{'CI excl. 0':>10} {'width (pts)':>11}")
    for p_a, p_b in ((0.9, 0.9), (0.7, 0.7), (0.92, 0.88)):
        for n in (40, 100, 300, 1000):
            for rho in (0.0, 0.3, 0.6):
                r = simulate(n, p_a, p_b, rho, args.trials, rng)
                print(f"{n:>5} {p_a:>5} {p_b:>5} {rho:>4}  {r['coverage']:>8.3f} {r['mcnemar_005']:>11.3f} "
                      f"{r['significant']:>10.3f} {r['mean_width_points']:>11.1f}")
    print(f"{args.trials} trials per row, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
