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
- ``ivf`` (larger N): an inverted-file search (faiss's ``PCA128,L2norm,IVF<4 sqrt N>_HNSW32,Flat``,
  nprobe ``IVF_NPROBE``) on the embedded rows: whitened rows as they are (128 dimensions); centred
  rows of more than 128 features projected on their 128 main directions and normalised again (the
  projection from a sample of at most 65,536 rows, computed with numpy: faiss's PCAMatrix took 20x
  longer on 2 cores), grouped into lists by faiss's spherical k-means, each row's ``nprobe`` nearest
  lists found through an HNSW graph of the centroids. Every row is a query, so the lists are searched
  as one matrix product per list (members x the rows that probe it) instead of faiss's row-by-row
  scan: the same neighbours (99.998 % of them on 200,000 x 1280 rows), the neighbour phase at 10^6
  rows 498 s -> 186-241 s. Measured against scikit-learn's brute-force NearestNeighbors and hnswlib
  (benchmarks/README.md, "Auditing"): brute force grows as N^2 (hours at 10^6 rows on 2 cores);
  HNSW holds the float32 rows plus its graph and builds slowly at d=1280.

Memory, N rows of d features, read ``chunk_rows`` at a time: ``exact`` holds O(N d) (the normalised
rows, at most ``EXACT_MAX_ROWS`` x d float32) plus ``_BLOCK_FLOATS`` similarities; ``ivf`` holds
O(N) (the projected rows, N x 128 float32, 512 MB at 10^6 rows whatever d is; their probes, N x
nprobe int64; the results, N x (k + 1) float32 + int64), the training sample while training
(65,536 x d float32: 335 MB at d = 1280, freed before the rows are projected) and O(chunk_rows x d)
per chunk, never N x d. Fitting the embedding holds the d x d moment (float64: 13 MB at d = 1280).

Both return, for every row, its ``k`` nearest other rows and their similarities: the embedding's own,
except for centred rows searched in 128 of their dimensions (:func:`approximate_similarities`), whose
kept pairs callers recompute.
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
WHITEN_DIMS = IVF_DIMS  # so the IVF searches whitened rows as they are: their similarities are exact
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
    """The store's :class:`Embedding`: whitened when it has at least ``WHITEN_MIN_ROWS`` rows, else
    centred; `whiten` True or False asks for one (AuditError for whitening too few rows: the rows
    would come out all equally far apart). One streaming pass; memory O(d^2)."""
    n, d = len(store), store.feature_dim
    if whiten is None:
        whiten = n >= WHITEN_MIN_ROWS
    elif whiten and n < WHITEN_MIN_ROWS:
        from featx.audit.findings import AuditError

        raise AuditError(f"store {store.path} has {n} rows; whitening estimates {WHITEN_DIMS} directions "
                         f"and needs at least {WHITEN_MIN_ROWS} rows: use similarity 'centred' or 'auto'")
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


def approximate_similarities(embedding: Embedding, method: str) -> bool:
    """Whether `method`'s similarities understate the embedding's: only ``ivf`` on centred rows of more
    than ``IVF_DIMS`` features, which it compares in their 128 main directions."""
    return method == "ivf" and embedding.dims > IVF_DIMS


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
    # 4 sqrt(N) lists of ~sqrt(N)/4 rows, a row's probes found through a small HNSW graph of the
    # centroids: with sqrt(N) lists and a flat quantizer, 10^6 queries took ~50 min on 2 busy cores
    # (17,000 dot products each); this visits ~2,000.
    nlist = int(min(4096, max(16, 4 * math.sqrt(n))))
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, max(30 * nlist, 4 * d), 65536),
                                                     replace=False))
    train = np.empty((sample.size, d), np.float32)
    for s in range(0, sample.size, chunk_rows):
        train[s:s + chunk_rows] = embedding.apply(store.features(sample[s:s + chunk_rows]))
    embed = _pca_embedding(train, IVF_DIMS)
    train = embed(train)
    dims = train.shape[1]
    kmeans = faiss.Kmeans(dims, nlist, niter=10, spherical=True, seed=1234)  # IndexIVF's, for inner products
    kmeans.train(train)
    del train
    quantizer = faiss.IndexHNSWFlat(dims, 32, faiss.METRIC_INNER_PRODUCT) if nlist >= 1024 else faiss.IndexFlatIP(dims)
    quantizer.add(kmeans.centroids)
    Y = np.empty((n, dims), np.float32)  # the index's contents: N x 128
    probes = np.empty((n, min(IVF_NPROBE, nlist)), np.int64)
    for X, _, rows in store.iter_chunks(chunk_rows):
        Y[rows] = embed(embedding.apply(X))
        probes[rows] = quantizer.search(Y[rows], probes.shape[1])[1]
    S, I = _search_lists(Y, probes, nlist, k + 1)
    del Y, probes
    own = I == np.arange(n)[:, None]
    # drop the row itself (or, when it is missing from its lists, the weakest hit)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    sims, idx = S[keep].reshape(n, k), I[keep].reshape(n, k)
    sims[idx < 0] = -np.inf
    return sims, idx


def _search_lists(Y: np.ndarray, probes: np.ndarray, nlist: int, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's `kk` rows of highest inner product among the members of the lists it probes (a
    row is a member of its first probe's list): an IVF search of all rows at once, as one matrix
    product per list (faiss's IndexIVFFlat scanned the lists row by row: 26 s -> 7 s at 200,000 rows)."""
    n, nprobe = probes.shape
    best_s = np.full((n, kk), -np.inf, np.float32)
    best_i = np.full((n, kk), -1, np.int64)
    members = np.argsort(probes[:, 0], kind="stable")
    member_starts = np.searchsorted(probes[members, 0], np.arange(nlist + 1))
    asked = np.argsort(probes.ravel(), kind="stable")
    asked_starts = np.searchsorted(probes.ravel()[asked], np.arange(nlist + 1))  # -1 (no probe) left out
    for lst in range(nlist):
        m = members[member_starts[lst]:member_starts[lst + 1]]
        q = asked[asked_starts[lst]:asked_starts[lst + 1]] // nprobe  # a row asks a list at most once
        if not len(m) or not len(q):
            continue
        top_s, top_j = _top_k(Y[q] @ Y[m].T, kk)
        merged_s, merged_j = _top_k(np.hstack([best_s[q], top_s]), kk)
        best_s[q] = merged_s
        best_i[q] = np.take_along_axis(np.hstack([best_i[q], m[top_j]]), merged_j, axis=1)
    return best_s, best_i


def _pca_embedding(sample: np.ndarray, dims: int):
    """Rows -> their coordinates on the `dims` main directions of `sample`, L2-normalised (faiss's
    ``PCA<dims>,L2norm``; its PCAMatrix took 60 s to train on 54,000 x 1280 rows on 2 cores, numpy 3 s).
    Rows of `dims` or fewer columns are returned as they are."""
    if sample.shape[1] <= dims:
        return lambda Z: np.ascontiguousarray(Z, np.float32)
    centre = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    scatter = np.zeros((sample.shape[1],) * 2, np.float32)
    for s in range(0, len(sample), 8192):  # a block at a time: no second copy of the sample
        C = sample[s:s + 8192] - centre
        scatter += C.T @ C
    _, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims], np.float32)

    def embed(Z: np.ndarray) -> np.ndarray:
        Y = (Z - centre) @ basis
        return Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
    return embed
