"""The 2-D embedding map of the eval split's features: PCA, or t-SNE on the first 50 PCs.

:func:`embedding_2d` subsamples large splits (stratified by class, seeded), reduces with
:func:`_pca` (an eigen-decomposition of the smaller Gram matrix, signs fixed as sklearn's
``svd_flip`` does) and, for 10 to ``max_points`` points, runs single-threaded seeded t-SNE.
The result is a plain dict the report stores in ``report.json`` and plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["embedding_2d"]


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``x`` on its first ``k`` principal components, and their variance ratios.

    Eigen-decomposition of the smaller Gram matrix (d x d, or n x n when n < d) rather than an
    SVD of the data: several times faster on 2,000 x 1,280 features and exact enough for a
    picture. Deterministic (signs fixed as sklearn's svd_flip does: the largest loading of each
    component is positive) and quiet on degenerate input (one row, one column, no variance).
    Components beyond the rank are zeros, so the result always has ``k`` columns.

    Kept instead of ``sklearn.decomposition.PCA``: checked against ``PCA(svd_solver="full")`` with
    the same sign rule, the scores agree to ~1e-13 relative and are identical at the 6 significant
    digits the report stores, but sklearn returns rounding noise (~1e-15) for components beyond
    the numerical rank where this returns zeros, and t-SNE, which runs on these scores, turns
    that noise into a different map (n < d: points moved by up to 45 units). Matching this would
    need the same rank cut-off, sign fix and degenerate-input guards around sklearn: no simpler.
    """
    n, d = x.shape
    scores = np.zeros((n, k))
    ratios = np.zeros(k)
    if n == 0 or d == 0 or np.all(x == x[0]):
        return scores, ratios  # no variance at all: every point at the origin
    centred = x - x.mean(axis=0)
    if d <= n:
        eigval, eigvec = np.linalg.eigh(centred.T @ centred)
        eigval, components = eigval[::-1], eigvec[:, ::-1]
    else:
        eigval, eigvec = np.linalg.eigh(centred @ centred.T)
        eigval, left = eigval[::-1], eigvec[:, ::-1]
        components = centred.T @ left  # unnormalised loadings: only their signs and ranks matter
    eigval = np.clip(eigval, 0.0, None)
    # Directions with (numerically) no variance carry only rounding noise: leave them at zero.
    m = int(min(k, np.count_nonzero(eigval > eigval[0] * 1e-12)))
    components = components[:, :m]
    biggest = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[biggest, np.arange(m)])
    signs[signs == 0] = 1.0
    if d <= n:
        scores[:, :m] = (centred @ components) * signs
    else:
        scores[:, :m] = left[:, :m] * np.sqrt(eigval[:m]) * signs
    ratios[:m] = eigval[:m] / eigval.sum()
    return scores, ratios


def _stratified_subsample(index: np.ndarray, labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` of ``index``, the same share of each class, seeded; sorted.

    Every class keeps at least one point (a class missing from the map would be misleading), so
    with more classes than ``max_points`` the result has one point per class.
    """
    if index.size <= max_points:
        return index
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * max_points / index.size
    take = np.minimum(np.maximum(np.floor(quota).astype(np.int64), 1), counts)
    left = max_points - int(take.sum())
    # Largest remainders get the points left over (ties: class order, via a stable sort) ...
    for c in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if left <= 0:
            break
        if take[c] < counts[c]:
            take[c] += 1
            left -= 1
    # ... and the one-per-class minimum is paid for by the largest classes.
    while left < 0 and take.max() > 1:
        take[int(np.argmax(take))] -= 1
        left += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(index[inverse == c], size=int(take[c]), replace=False) for c in range(classes.size)]
    return np.sort(np.concatenate(chosen))


def _round_sig(value: float, digits: int = 6) -> float:
    # 6 significant digits: plenty for a scatter plot, and a much smaller JSON.
    return float(f"{value:.{digits}g}")


def embedding_2d(
    features: Any,
    labels: Any,
    *,
    method: str = "auto",
    max_points: int = 2000,
    seed: int = 0,
    perplexity: float = 30.0,
) -> dict:
    """A 2-D map of ``features`` for a scatter plot coloured by class; deterministic for a seed.

    Parameters
    ----------
    features : array-like, shape (n, d) or (n,)
        One row per image (the eval split's features). Rows with NaN or infinity (images that
        could not be decoded) are left out.
    labels : array-like of int, shape (n,)
    method : {"auto", "pca", "tsne"}
        ``"auto"`` uses t-SNE when 10 <= n <= ``max_points`` and PCA otherwise. t-SNE
        (``sklearn.manifold.TSNE``, ``init="pca"``, seeded, single-threaded so that its sums
        always run in the same order) runs on the first 50 principal components; it falls back
        to PCA, with a ``"note"``, for fewer than 10 points or points that are all identical.
    max_points : int
        Larger sets are subsampled to this many points, stratified by class and seeded. t-SNE
        costs about O(n log n) on one core: some 10-30 s for 2,000 points.
    seed : int
    perplexity : float
        t-SNE perplexity, lowered to (n - 1) / 3 for small n.

    Returns
    -------
    dict
        ``method`` ("pca" or "tsne"), ``points`` [[x, y], ...], ``labels`` [int, ...],
        ``indices`` (row of each point in ``features``), ``n_total`` (rows given), ``n_points``,
        ``seed``; for PCA ``explained_variance`` (ratios of the two components), for t-SNE
        ``perplexity`` and ``pca_dims``; ``note`` when the method asked for could not be used.

    >>> rng = np.random.default_rng(0)
    >>> emb = embedding_2d(rng.normal(size=(8, 5)), [0, 1] * 4)
    >>> emb["method"], len(emb["points"]), emb["n_total"]
    ('pca', 8, 8)
    """
    if method not in ("auto", "pca", "tsne"):
        raise ValueError(f"method must be 'auto', 'pca' or 'tsne', got {method!r}")
    if int(max_points) < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    max_points = int(max_points)
    x = np.asarray(features)
    if x.dtype.kind not in "biuf":
        x = x.astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    y = np.asarray(labels).reshape(-1)
    if y.size != x.shape[0]:
        raise ValueError(f"features has {x.shape[0]} rows but labels has {y.size}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)

    n_total = int(x.shape[0])
    usable = np.flatnonzero(np.isfinite(x).all(axis=1)) if x.shape[1] else np.arange(n_total)
    index = _stratified_subsample(usable, y[usable], max_points, seed)
    # float64 only for the (at most max_points) rows kept, not for a whole large split
    xs, ys = x[index].astype(np.float64), y[index]
    n = int(index.size)

    note = None
    want_tsne = method == "tsne" or (method == "auto" and 10 <= usable.size <= max_points)
    reduced, ratios = _pca(xs, max(2, min(50, xs.shape[1])))
    if want_tsne and n < 10:
        note = f"t-SNE needs at least 10 points, got {n}: PCA instead"
        want_tsne = False
    elif want_tsne and not np.any(ratios > 0):
        note = "all points are identical: PCA instead of t-SNE"
        want_tsne = False

    result: dict[str, Any] = {"method": "tsne" if want_tsne else "pca"}
    if want_tsne:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perp = float(min(perplexity, (n - 1) / 3.0))
        # One thread: the Barnes-Hut gradient sums partial results across OpenMP threads in
        # whatever order they finish, which makes multi-threaded t-SNE differ run to run.
        with threadpool_limits(limits=1):
            points = TSNE(
                n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed
            ).fit_transform(reduced.astype(np.float32))
        result.update(perplexity=perp, pca_dims=int(reduced.shape[1]))
    else:
        points = reduced[:, :2]
        result["explained_variance"] = [_round_sig(float(r)) for r in ratios[:2]]
    result.update(
        points=[[_round_sig(a), _round_sig(b)] for a, b in np.asarray(points, dtype=np.float64).tolist()],
        labels=[int(v) for v in ys],
        indices=[int(i) for i in index],
        n_total=n_total,
        n_points=n,
        seed=int(seed),
    )
    if note:
        result["note"] = note
    return result

