"""Outliers: images far from every class (a logo, a blank frame, a photo of something no class is about).

Score: the Mahalanobis distance of a row to the *nearest* class mean under one covariance shared by
the classes (Lee et al., "A simple unified framework for detecting out-of-distribution samples",
NeurIPS 2018), on the centred, L2-normalised features of :mod:`featx.audit.neighbours`:

    score(x) = min_c (x - mu_c)^T S^-1 (x - mu_c),   S = (1 - a) * W + a * tr(W) / d * I

with W the within-class covariance of the labelled rows and a the Ledoit-Wolf shrinkage (at least
``SHRINKAGE``), large with few rows per dimension and small with many (0.59 for 26 test photos in
256 dimensions, 0.013 for 2,204 flowers5 photos). The means and W that score a row come from the
other half of the rows (alternate store rows), so an image never shapes its own yardstick. A row is
flagged when the robust z-score of its score, (score - median) / (1.4826 * MAD) over all rows,
reaches ``z_threshold`` (default ``OUTLIER_Z``).

Why not the distance to the nearest neighbours: on flowers5 (benchmarks/README.md, "Auditing") six
off-topic photos (an astronaut, a coffee cup, a rocket, ...) ranked 26th-577th of 4,409 by mean
distance to their 10 nearest neighbours, and 1st-6th by this score; the covariance discounts the
directions in which the classes naturally vary. Six streaming passes over the store (means, covariance
and scores, per half); memory O(d^2) (plus N x classes for the posteriors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featx.audit.findings import Outlier
from featx.audit.neighbours import normalise

if TYPE_CHECKING:
    from featx.store import FeatureStore

OUTLIER_Z = 5.0
SHRINKAGE = 0.01


def _class_means(store: FeatureStore, mean: np.ndarray, y: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Per class (rows of ``label_names``), the mean of the rows with y >= 0; NaN for absent classes."""
    n_classes = len(store.label_names)
    sums = np.zeros((n_classes, store.feature_dim))
    counts = np.zeros(n_classes)
    for X, _, rows in store.iter_chunks(chunk_rows):
        labelled = y[rows] >= 0
        Z = normalise(X[labelled], mean)
        one_hot = np.zeros((n_classes, len(Z)))
        one_hot[y[rows][labelled], np.arange(len(Z))] = 1
        sums += one_hot @ Z  # a product, not np.add.at (a third of the class statistics' time)
        counts += np.bincount(y[rows][labelled], minlength=n_classes)
    present = counts > 0
    return np.where(present[:, None], sums / np.maximum(counts, 1)[:, None], np.nan)


def _class_statistics(store: FeatureStore, mean: np.ndarray, y: np.ndarray, chunk_rows: int):
    """Means of the classes present and the inverse of the shared within-class covariance, shrunk
    towards a multiple of the identity by the Ledoit-Wolf estimate (accumulated in one pass)."""
    mus = _class_means(store, mean, y, chunk_rows)
    d = store.feature_dim
    scatter = np.zeros((d, d))
    fourth = 0.0  # sum of |r|^4 over residuals r: the Ledoit-Wolf variance of the estimate
    n = 0
    for X, _, rows in store.iter_chunks(chunk_rows):
        labelled = y[rows] >= 0
        R = normalise(X[labelled], mean) - mus[y[rows][labelled]].astype(np.float32)
        scatter += R.T @ R  # float32 within a chunk (half the time), float64 across chunks
        R = R.astype(np.float64)
        fourth += float((np.einsum("nd,nd->n", R, R) ** 2).sum())
        n += len(R)
    within = scatter / n
    mu = np.trace(within) / d
    delta = float(((within - mu * np.eye(d)) ** 2).sum())
    beta = min(delta, max(0.0, fourth / n - float((within ** 2).sum())) / n)
    shrinkage = beta / delta if delta > 0 else 1.0
    # the Ledoit-Wolf shrinkage, never below SHRINKAGE: few rows per dimension need more, many need little
    shrinkage = max(SHRINKAGE, shrinkage)
    shrunk = (1 - shrinkage) * within + shrinkage * mu * np.eye(d)
    return mus[~np.isnan(mus[:, 0])], np.linalg.pinv(shrunk, hermitian=True)


def class_distances(store: FeatureStore, mean: np.ndarray, chunk_rows: int, *,
                    posteriors: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row: the squared Mahalanobis distance to the nearest class mean, with the means and covariance
    of the *other* half of the rows (alternate rows), so that an image never shapes its own yardstick:
    fitted on all rows, an off-topic image widens the covariance in its own direction and hides (52
    test photos in 256 dimensions: z 1.7 in-sample, far above the rest out-of-sample).

    With ``posteriors``, also the out-of-fold class probabilities of the same Gaussian model (linear
    discriminant analysis: softmax of -D/2 + log prior, columns = ``store.label_names``), the probe
    :mod:`featx.audit.labels` uses for stores too large for memory."""
    y = store.y
    half = np.arange(len(store)) % 2
    scores = np.empty(len(store))
    proba = np.zeros((len(store), len(store.label_names)), np.float32) if posteriors else None
    for fold in (0, 1):
        fit_y = np.where(half == fold, -1, y)  # fit on the other half, score this one
        mus, precision = _class_statistics(store, mean, fit_y, chunk_rows)
        present = np.flatnonzero(np.bincount(fit_y[fit_y >= 0], minlength=len(store.label_names)))
        log_prior = np.log(np.bincount(fit_y[fit_y >= 0])[present] / (fit_y >= 0).sum())
        mu_terms = np.einsum("cd,de,ce->c", mus, precision, mus)
        for X, _, rows in store.iter_chunks(chunk_rows):
            mine = half[rows] == fold
            Z = normalise(X[mine], mean).astype(np.float64)
            ZP = Z @ precision
            # (z - mu)^T P (z - mu) for every class at once
            D = np.einsum("nd,nd->n", ZP, Z)[:, None] - 2 * ZP @ mus.T + mu_terms[None, :]
            scores[rows[mine]] = D.min(axis=1)
            if posteriors:
                logit = -0.5 * D + log_prior
                p = np.exp(logit - logit.max(axis=1, keepdims=True))
                proba[np.ix_(rows[mine], present)] = p / p.sum(axis=1, keepdims=True)
    return scores, proba


def robust_z(scores: np.ndarray) -> np.ndarray:
    median = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - median)))
    if mad <= 1e-12:
        mad = float(np.mean(np.abs(scores - median))) or 1.0  # most scores equal: the mean deviation
    return (scores - median) / mad


def find_outliers(scores: np.ndarray, rows, *, z_threshold: float = OUTLIER_Z) -> list[Outlier]:
    """Flagged rows, farthest first. `scores` from :func:`class_distances`, `rows` a duplicates._Rows."""
    z = robust_z(scores)
    flagged = np.flatnonzero(z >= z_threshold)
    flagged = flagged[np.argsort(-scores[flagged], kind="stable")]
    return [Outlier(row=int(r), path=str(rows.path[r]), label=str(rows.label[r]), split=str(rows.split[r]),
                    score=float(scores[r]), z=float(z[r])) for r in flagged]
