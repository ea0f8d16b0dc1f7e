"""Outliers: images far from every other image of the set, whatever its class (a logo, a blank frame,
a photo of something no class is about).

Score: the mean cosine distance (1 - similarity of the centred features) from a row to its ``k``
nearest neighbours, leaving out its own copies (neighbours at or above the near-duplicate
threshold, so a duplicated off-topic image is still far from the rest). A row is flagged when the
robust z-score of its score, (score - median) / (1.4826 * MAD) over all rows, reaches ``z_threshold``.
The median and MAD adapt the cut to how spread out a backbone's features are.
"""

from __future__ import annotations

import numpy as np

from featx.audit.findings import Outlier

OUTLIER_K = 10
OUTLIER_Z = 3.5


def outlier_scores(sims: np.ndarray, near_threshold: float) -> np.ndarray:
    """Per row: mean cosine distance to its nearest neighbours that are not its copies."""
    usable = np.isfinite(sims) & (sims < near_threshold)
    counts = usable.sum(axis=1)
    total = np.where(usable, 1.0 - sims, 0.0).sum(axis=1)
    # a row whose every neighbour is a copy sits in a cluster of copies: not far from anything
    return np.where(counts > 0, total / np.maximum(counts, 1), 0.0)


def robust_z(scores: np.ndarray) -> np.ndarray:
    median = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - median)))
    if mad <= 1e-12:
        mad = float(np.mean(np.abs(scores - median))) or 1.0  # most scores equal: the mean deviation
    return (scores - median) / mad


def find_outliers(sims: np.ndarray, rows, *, near_threshold: float, z_threshold: float = OUTLIER_Z) -> list[Outlier]:
    """Flagged rows, farthest first. `rows` is duplicates._Rows (path, label, split per row)."""
    scores = outlier_scores(sims[:, :OUTLIER_K], near_threshold)
    z = robust_z(scores)
    flagged = np.flatnonzero(z >= z_threshold)
    flagged = flagged[np.argsort(-scores[flagged], kind="stable")]
    return [Outlier(row=int(r), path=str(rows.path[r]), label=str(rows.label[r]), split=str(rows.split[r]),
                    score=float(scores[r]), z=float(z[r])) for r in flagged]
