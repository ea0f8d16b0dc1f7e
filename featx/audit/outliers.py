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
directions in which the classes naturally vary. Three streaming passes over the store (class means,
covariance, scores; both halves in each), ``chunk_rows`` rows at a time. Memory: O(d^2) (two d x d
covariances), O(chunk_rows x d) per chunk, O(N) scores and fold labels, and N x classes float32
posteriors when asked for (200 MB at 10^6 rows x 50 classes). Never N x d.
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


def _class_means(store: FeatureStore, mean: np.ndarray, fit_ys: list[np.ndarray], chunk_rows: int) -> list:
    """Per labelling in `fit_ys` (one per fold), the mean of each class's rows (y >= 0) as rows of
    ``label_names``; NaN for absent classes. One pass for all of them."""
    n_classes = len(store.label_names)
    sums = np.zeros((len(fit_ys), n_classes, store.feature_dim))
    counts = np.zeros((len(fit_ys), n_classes))
    for X, _, rows in store.iter_chunks(chunk_rows):
        Z = normalise(X, mean)
        for f, y in enumerate(fit_ys):
            labels = y[rows]
            labelled = labels >= 0
            one_hot = np.zeros((n_classes, int(labelled.sum())))
            one_hot[labels[labelled], np.arange(one_hot.shape[1])] = 1
            sums[f] += one_hot @ Z[labelled]  # a product, not np.add.at (a third of the time at 10^5 rows)
            counts[f] += np.bincount(labels[labelled], minlength=n_classes)
    return [np.where(c[:, None] > 0, s / np.maximum(c, 1)[:, None], np.nan) for s, c in zip(sums, counts)]


def _class_statistics(store: FeatureStore, mean: np.ndarray, fit_ys: list[np.ndarray], chunk_rows: int) -> list:
    """Per labelling in `fit_ys`: the means of the classes present and the inverse of the shared
    within-class covariance (two passes for all labellings)."""
    mus = _class_means(store, mean, fit_ys, chunk_rows)
    d = store.feature_dim
    scatter = np.zeros((len(fit_ys), d, d))
    fourth = np.zeros(len(fit_ys))  # sum of |r|^4 over residuals r: the Ledoit-Wolf variance of the estimate
    n = np.zeros(len(fit_ys), np.int64)
    for X, _, rows in store.iter_chunks(chunk_rows):
        Z = normalise(X, mean)
        for f, y in enumerate(fit_ys):
            labels = y[rows]
            labelled = labels >= 0
            R = Z[labelled] - mus[f][labels[labelled]].astype(np.float32)
            scatter[f] += R.T @ R  # float32 within a chunk (half the time), float64 across chunks
            R = R.astype(np.float64)
            fourth[f] += float((np.einsum("nd,nd->n", R, R) ** 2).sum())
            n[f] += len(R)
    return [(m[~np.isnan(m[:, 0])], _shrunk_precision(sc / k, q, int(k)))
            for m, sc, q, k in zip(mus, scatter, fourth, n)]


def _shrunk_precision(within: np.ndarray, fourth: float, n: int) -> np.ndarray:
    """The inverse of the within-class covariance shrunk towards a multiple of the identity by the
    Ledoit-Wolf estimate, never less than ``SHRINKAGE``: few rows per dimension need more, many little."""
    d = len(within)
    mu = np.trace(within) / d
    delta = float(((within - mu * np.eye(d)) ** 2).sum())
    beta = min(delta, max(0.0, fourth / n - float((within ** 2).sum())) / n)
    shrinkage = max(SHRINKAGE, beta / delta if delta > 0 else 1.0)
    shrunk = (1 - shrinkage) * within + shrinkage * mu * np.eye(d)
    return np.linalg.pinv(shrunk, hermitian=True)


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
    fit_ys = [np.where(half == fold, -1, y) for fold in (0, 1)]  # fit on the other half, score this one
    models = []
    for fit_y, (mus, precision) in zip(fit_ys, _class_statistics(store, mean, fit_ys, chunk_rows)):
        present = np.flatnonzero(np.bincount(fit_y[fit_y >= 0], minlength=len(store.label_names)))
        log_prior = np.log(np.bincount(fit_y[fit_y >= 0])[present] / (fit_y >= 0).sum())
        models.append((mus, precision, present, log_prior, np.einsum("cd,de,ce->c", mus, precision, mus)))
    scores = np.empty(len(store))
    proba = np.zeros((len(store), len(store.label_names)), np.float32) if posteriors else None
    for X, _, rows in store.iter_chunks(chunk_rows):
        Z_chunk = normalise(X, mean)
        for fold, (mus, precision, present, log_prior, mu_terms) in enumerate(models):
            mine = half[rows] == fold
            Z = Z_chunk[mine].astype(np.float64)
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
