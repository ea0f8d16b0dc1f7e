"""Exact duplicates (the same sha256, already the store's row key) and near duplicates (re-encoded,
resized, slightly cropped copies: cosine similarity in the store's embedding, whitened or centred
(:mod:`featx.audit.neighbours`), at or above that space's threshold, found through the neighbour
search; similarities the search only approximated are recomputed on the stored features).

A pair whose two rows sit in different splits is a *leak* (the held-out score is then partly a
memory test); one whose rows carry different labels is a label conflict. Both come first.

Memory, N rows of d features, P candidate pairs (at most N x k): the per-row columns of ``_Rows``
and the content codes are O(N), the candidates O(N k) integers (and their similarities); the
re-check (centred rows searched in fewer dimensions only) O(P) sums plus one
column slab of all rows (``_SLAB_BYTES`` of float32: 67 columns at 10^6 rows, plus the stored slab
while it is converted; the slabs are read one after the other, contiguously) and O(chunk_rows x slab)
per step. Never N x d.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featx.audit.findings import DuplicatePair
from featx.audit.neighbours import Embedding

if TYPE_CHECKING:
    from featx.store import FeatureStore

# Default threshold per embedding kind (benchmarks/README.md, "Auditing": flowers5 with 86 planted
# copies, pre-existing flowers5 copies checked by eye counted as found). Whitened: 0.70, chosen on two
# plantings (recall 0.977 and 0.977, precision 0.928 and 0.920), then checked on a third: recall 0.988,
# precision 0.921. Centred: 0.90 (copies >= 0.93, distinct photos <= 0.85 among the test photos;
# recall 0.81 at precision 0.64 on flowers5).
NEAR_THRESHOLDS = {"whitened": 0.70, "centred": 0.90}
_APPROX_MARGIN = 0.05   # an approximate search may understate a similarity by this much
_CANDIDATE_ROWS = 1 << 16  # rows whose neighbours are made candidate pairs at a time
_SLAB_BYTES = 1 << 28   # the exact re-check holds this much float32 at once: 67 columns at 10^6 rows


class _Rows:
    """The per-row columns a finding quotes, read once."""

    def __init__(self, store: FeatureStore):
        names = np.array(store.label_names + [""], dtype=object)
        self.path, self.split, self.sha = store.paths, store.splits, store.sha256
        self.y = store.y
        self.label = names[self.y]

    def describe(self, r: int) -> dict:
        return {"row": int(r), "path": str(self.path[r]), "label": str(self.label[r]), "split": str(self.split[r])}

    def pair(self, kind: str, a: int, b: int, similarity: float) -> DuplicatePair:
        return DuplicatePair(kind=kind, similarity=round(float(similarity), 6), a=self.describe(a),
                             b=self.describe(b), cross_split=bool(self.split[a] != self.split[b]),
                             cross_label=bool(self.y[a] != self.y[b]))


def exact_duplicates(rows: _Rows) -> list[DuplicatePair]:
    """One pair per extra copy: each copy with the group's first row (in store order)."""
    order = np.argsort(rows.sha, kind="stable")
    sha = rows.sha[order]
    starts = np.flatnonzero(np.r_[True, sha[1:] != sha[:-1]])
    ends = np.r_[starts[1:], len(sha)]
    pairs = []
    for s, e in zip(starts, ends):
        if e - s > 1:
            group = np.sort(order[s:e])
            pairs += [rows.pair("exact", group[0], other, 1.0) for other in group[1:]]
    return pairs


def _candidates(sims: np.ndarray, idx: np.ndarray, sha: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique (a, b) pairs, a < b, of neighbours at or above `floor` with different content, and the
    similarity the search gave each."""
    # contents compared as integer codes, pairs as one int64 key each, a block of rows at a time:
    # sha[a] for all N x k neighbours (10^7 x 64 characters at 10^6 rows) was the audit's multi-GB peak
    content = np.unique(sha, return_inverse=True)[1].reshape(-1)
    n = len(sha)
    keys, values = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for start in range(0, len(sims), _CANDIDATE_ROWS):
        i, j = np.nonzero(sims[start:start + _CANDIDATE_ROWS] >= floor)
        a, b = (start + i).astype(np.int64), idx[start + i, j]
        ok = (b >= 0) & (content[a] != content[np.maximum(b, 0)])
        a, b = a[ok], b[ok]
        block_keys, first = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)
        keys.append(block_keys)
        values.append(sims[start + i, j][ok][first])
    keys, first = np.unique(np.concatenate(keys), return_index=True)
    values = np.concatenate(values)[first]
    return np.stack([keys // max(n, 1), keys % max(n, 1)], axis=1), values


def _exact_similarity(store: FeatureStore, mean: np.ndarray, pairs: np.ndarray, chunk_rows: int) -> np.ndarray:
    """The centred cosine of each pair, read in column slabs of all rows (contiguous reads, never a
    scattered row: h5py's point selection took ~75 us a row); dot products and squared norms add up
    over the slabs. Each slab is centred in float32 once (converting every gathered row instead took
    half the time). Memory: one slab (``_SLAB_BYTES`` of float32, plus the stored slab while it is
    converted), O(N) norms, O(pairs) sums."""
    n, d = len(store), store.feature_dim
    width = int(min(d, max(1, _SLAB_BYTES // (max(1, n) * 4))))
    dots = np.zeros(len(pairs))
    squares = np.zeros(n)
    for start in range(0, d, width):
        columns = slice(start, min(d, start + width))
        stored, centre = store.feature_columns(columns), mean[columns]
        Z = np.empty(stored.shape, np.float32)
        for s in range(0, n, chunk_rows):
            Z[s:s + chunk_rows] = stored[s:s + chunk_rows] - centre
            squares[s:s + chunk_rows] += np.einsum("nd,nd->n", Z[s:s + chunk_rows], Z[s:s + chunk_rows])
        del stored
        for s in range(0, len(pairs), chunk_rows):
            a, b = pairs[s:s + chunk_rows].T
            dots[s:s + len(a)] += np.einsum("nd,nd->n", Z[a], Z[b])
        del Z
    norms = np.maximum(np.sqrt(squares), 1e-12)
    return (dots / (norms[pairs[:, 0]] * norms[pairs[:, 1]])).astype(np.float32)


def near_duplicates(store: FeatureStore, rows: _Rows, embedding: Embedding, sims: np.ndarray, idx: np.ndarray, *,
                    threshold: float, approximate: bool, chunk_rows: int) -> list[DuplicatePair]:
    """Pairs of different content whose cosine in `embedding` is >= `threshold`. `approximate`: the
    search compared fewer dimensions than the embedding has (centred rows through faiss's IVF), so
    its similarities are recomputed; otherwise they are the embedding's own."""
    if approximate:
        if embedding.kind != "centred":
            raise ValueError(f"only centred similarities are recomputed from the stored columns, not {embedding.kind}")
        pairs, _ = _candidates(sims, idx, rows.sha, threshold - _APPROX_MARGIN)
        similarity = _exact_similarity(store, embedding.mean, pairs, chunk_rows) if len(pairs) else np.zeros(0)
    else:
        pairs, similarity = _candidates(sims, idx, rows.sha, threshold - 1e-6)
    keep = similarity >= threshold - 1e-6
    return [rows.pair("near", a, b, s) for (a, b), s in zip(pairs[keep].tolist(), similarity[keep].tolist())]


def find_duplicates(store: FeatureStore, embedding: Embedding, sims: np.ndarray, idx: np.ndarray, *,
                    threshold: float, approximate: bool = False, chunk_rows: int = 8192,
                    rows: _Rows | None = None) -> list[DuplicatePair]:
    """Exact and near duplicate pairs, leaks first, then label conflicts, then by similarity."""
    rows = rows if rows is not None else _Rows(store)
    found = exact_duplicates(rows) + near_duplicates(store, rows, embedding, sims, idx, threshold=threshold,
                                                     approximate=approximate, chunk_rows=chunk_rows)
    return sorted(found, key=lambda p: p.rank_key)
