"""Nearest neighbours of every store row by cosine similarity, in bounded memory.

**The space.** Rows are compared after an :class:`Embedding` fitted on the store itself in one
streaming pass (the mean and the d x d second moment, float64):

- ``whitened`` (stores of at least ``WHITEN_MIN_ROWS`` rows): centred, projected on the store's
  ``WHITEN_DIMS`` main directions, each divided by its standard deviation (PCA whitening,
  eigenvalues floored at ``WHITEN_EPS`` of their mean), then L2-normalised. Whitening evens out the few
  directions in which all photos of a set vary together (colour, brightness, "flower field"), so what
  is left is what makes one photograph itself: on flowers5 with planted copies (benchmarks/README.md,
  "Auditing") the precision at 95 % recall of the copies rose from 0.12 (centred cosine) to 0.85
  (planted pairs only), and 0.70 separates copies from distinct photos on the 256-d default store and
  a 2,976-d multi-layer one alike (128 dimensions; 256 or all of them moved the threshold with d).
  It needs many distinct scenes: on 2,660 overlapping crops of 7 photos (bursts of few scenes) the
  whitened space is the crops' variation and copies no longer stand out; use ``centred`` there.
- ``centred`` (smaller stores, where N rows cannot estimate 128 directions: N whitened points in
  N - 1 dimensions are all equally far apart): minus the mean, L2-normalised. Pooled CNN features are
  non-negative and every pair of images has a cosine of 0.5-0.9 on raw features; centred, unrelated
  images sit near 0 and copies near 1.

Each space has its own default threshold (:data:`featx.audit.duplicates.NEAR_THRESHOLDS`); the
audit's settings record which one was used.

**The search**, chosen by size (``method="auto"``):

- ``exact`` (N <= ``EXACT_MAX_ROWS``): the embedded rows in memory (N x D float32) and the
  similarities of a block of query rows against all rows at a time, the block sized so that it
  holds at most ``_BLOCK_FLOATS`` numbers; no N x N matrix ever exists.
- ``ivf`` (larger N): faiss, ``IVF<4 sqrt N>_HNSW32,Flat`` on the embedded rows (whitened: 128
  dimensions, N x 128 float32 = 512 MB at 10^6 rows whatever d is; centred rows are first reduced
  by faiss ``PCA128,L2norm``), filled and queried a chunk of store rows at a time, ``nprobe``
  lists searched per query. Measured against scikit-learn's brute-force NearestNeighbors and
  hnswlib (benchmarks/README.md, "Auditing"): brute force grows as N^2 (hours at 10^6 rows on 2
  cores); HNSW holds the float32 rows plus its graph and builds slowly at d=1280.

Both return, for every row, its ``k`` nearest other rows and their similarities (approximate for
``ivf``; callers that threshold recompute the exact cosine of the pairs they keep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from featx.store import FeatureStore

EXACT_MAX_ROWS = 100_000
_BLOCK_FLOATS = 1 << 25  # similarities held at once by the exact search: 128 MiB of float32
IVF_NPROBE = 8
IVF_DIMS = 128
WHITEN_DIMS = 128
WHITEN_MIN_ROWS = 20 * WHITEN_DIMS  # rows per estimated direction, at least 20 (2,560 rows)
WHITEN_EPS = 1e-2  # eigenvalue floor, relative to their mean: directions of ~no variance stay quiet


def feature_mean(store: FeatureStore, chunk_rows: int) -> np.ndarray:
    """The mean feature row, in one pass of `chunk_rows` rows at a time (float64 sums)."""
    total = np.zeros(store.feature_dim, np.float64)
    for X, _, _ in store.iter_chunks(chunk_rows):
        total += X.sum(axis=0, dtype=np.float64)
    return (total / max(1, len(store))).astype(np.float32)


def normalise(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Centred, L2-normalised float32 rows (an all-mean row stays zero: similarity 0 to everything)."""
    Z = np.asarray(X, np.float32) - mean
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Embedding:
    """How rows are compared: ``apply(X)`` gives float32 rows whose dot products are the similarities.
    ``kind`` is ``"whitened"`` (``projection`` d x D) or ``"centred"`` (``projection`` None)."""

    kind: str
    mean: np.ndarray
    projection: np.ndarray | None = None

    @property
    def name(self) -> str:
        """What the audit's settings record: ``"whitened-128"`` or ``"centred"``."""
        return f"whitened-{self.projection.shape[1]}" if self.projection is not None else "centred"

    @property
    def dims(self) -> int:
        return self.projection.shape[1] if self.projection is not None else self.mean.shape[0]

    def apply(self, X: np.ndarray) -> np.ndarray:
        if self.projection is None:
            return normalise(X, self.mean)
        Z = (np.asarray(X, np.float32) - self.mean) @ self.projection
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def fit_embedding(store: FeatureStore, chunk_rows: int, *, whiten: bool | None = None) -> Embedding:
    """The store's :class:`Embedding`: whitened when it has at least ``WHITEN_MIN_ROWS`` rows (or
    `whiten` says so), else centred. One streaming pass; memory O(d^2)."""
    n, d = len(store), store.feature_dim
    if whiten is None:
        whiten = n >= WHITEN_MIN_ROWS
    if not whiten:
        return Embedding("centred", feature_mean(store, chunk_rows))
    shift = None  # the first chunk's mean: second moments about it do not cancel catastrophically
    total = np.zeros(d)
    moment = np.zeros((d, d))
    for X, _, _ in store.iter_chunks(chunk_rows):
        X = np.asarray(X, np.float32)
        shift = X.mean(axis=0) if shift is None else shift
        R = X - shift
        total += R.sum(axis=0, dtype=np.float64)
        moment += R.T @ R  # float32 within a chunk, float64 across chunks
    offset = total / max(1, n)
    covariance = moment / max(1, n) - np.outer(offset, offset)
    eigenvalues, vectors = np.linalg.eigh(covariance)
    top = np.argsort(eigenvalues)[::-1][:min(WHITEN_DIMS, d)]
    floor = WHITEN_EPS * max(float(eigenvalues[top].mean()), 1e-12)
    projection = vectors[:, top] / np.sqrt(np.maximum(eigenvalues[top], 0) + floor)
    return Embedding("whitened", (shift + offset).astype(np.float32), projection.astype(np.float32))


def nearest_neighbours(store: FeatureStore, embedding: Embedding, k: int, *, method: str = "auto",
                       chunk_rows: int = 8192) -> tuple[np.ndarray, np.ndarray, str]:
    """(similarities (N, k) float32, neighbour rows (N, k) int64, method used), best first; a row
    never lists itself. Rows with fewer than k others get -1 / -inf in the missing places."""
    n = len(store)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_ROWS else "ivf"
    if method == "exact":
        sims, idx = _exact(store, embedding, k, chunk_rows)
    elif method == "ivf":
        sims, idx = _ivf(store, embedding, k, chunk_rows)
    else:
        raise ValueError(f"unknown neighbour search {method!r}; expected 'auto', 'exact' or 'ivf'")
    return sims, idx, method


def _top_k(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row of S, sorted, with their column indices."""
    kk = min(k, S.shape[1])
    part = np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk < S.shape[1] else np.tile(np.arange(kk), (len(S), 1))
    vals = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def _pad(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] >= k:
        return sims[:, :k], idx[:, :k]
    extra = k - sims.shape[1]
    return (np.hstack([sims, np.full((len(sims), extra), -np.inf, np.float32)]),
            np.hstack([idx, np.full((len(idx), extra), -1, np.int64)]))


def _exact(store: FeatureStore, embedding: Embedding, k: int, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(store)
    Z = np.empty((n, embedding.dims), np.float32)
    for X, _, rows in store.iter_chunks(chunk_rows):
        Z[rows] = embedding.apply(X)
    block = max(1, min(n, _BLOCK_FLOATS // max(1, n)))
    sims = np.empty((n, min(k, n - 1)), np.float32)
    idx = np.empty((n, min(k, n - 1)), np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        S = Z[start:stop] @ Z.T
        S[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not one's own neighbour
        if sims.shape[1]:
            sims[start:stop], idx[start:stop] = _top_k(S, sims.shape[1])
    return _pad(sims, idx, k)


def _ivf(store: FeatureStore, embedding: Embedding, k: int, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError:
        raise RuntimeError(
            f"{len(store)} rows need the approximate neighbour index of faiss (exact search up to "
            f"{EXACT_MAX_ROWS} rows): pip install 'featx[audit]' (faiss-cpu)") from None
    n, d = len(store), embedding.dims
    # 4 sqrt(N) lists of ~sqrt(N)/4 rows, their centroids found through a small HNSW graph: with
    # sqrt(N) lists and a flat quantizer, 10^6 queries took ~50 min on 2 busy cores (17,000 dot
    # products each); this visits ~2,000.
    nlist = int(min(4096, max(16, 4 * math.sqrt(n))))
    reduce = f"PCA{IVF_DIMS},L2norm," if d > IVF_DIMS else ""
    quantizer = "_HNSW32" if nlist >= 1024 else ""
    index = faiss.index_factory(d, f"{reduce}IVF{nlist}{quantizer},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, max(30 * nlist, 4 * d), 65536),
                                                     replace=False))
    index.train(np.vstack([embedding.apply(store.features(sample[s:s + chunk_rows]))
                           for s in range(0, sample.size, chunk_rows)]))
    for X, _, rows in store.iter_chunks(chunk_rows):
        index.add_with_ids(embedding.apply(X), rows.astype(np.int64))
    faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for X, _, rows in store.iter_chunks(chunk_rows):
        S, I = index.search(embedding.apply(X), k + 1)
        own = I == rows[:, None]
        # drop the row itself (or, when it is missing from its lists, the weakest hit)
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(rows)), drop] = False
        sims[rows] = S[keep].reshape(len(rows), k)
        idx[rows] = I[keep].reshape(len(rows), k)
    sims[idx < 0] = -np.inf
    return sims, idx
