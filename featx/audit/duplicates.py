"""Exact duplicates (the same sha256, already the store's row key) and near duplicates (re-encoded,
resized, slightly cropped copies: cosine similarity in the store's embedding, whitened or centred
(:mod:`featx.audit.neighbours`), at or above that space's threshold, found through the neighbour
search and confirmed on the exact features).

A pair whose two rows sit in different splits is a *leak* (the held-out score is then partly a
memory test); one whose rows carry different labels is a label conflict. Both come first.
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
# plantings (recall 0.977 and 0.977, precision 0.928 and 0.912), then checked on a third: recall 0.988,
# precision 0.912. Centred: 0.90 (copies >= 0.93, distinct photos <= 0.85 among the test photos;
# recall 0.81 at precision 0.64 on flowers5).
NEAR_THRESHOLDS = {"whitened": 0.70, "centred": 0.90}
_APPROX_MARGIN = 0.05   # an approximate search may understate a similarity by this much


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


def _candidates(sims: np.ndarray, idx: np.ndarray, sha: np.ndarray, floor: float) -> np.ndarray:
    """Unique (a, b) pairs, a < b, of neighbours above `floor` with different content."""
    i, j = np.nonzero(sims >= floor)
    b = idx[i, j]
    a = i.astype(np.int64)
    ok = (b >= 0) & (sha[a] != sha[np.maximum(b, 0)])
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[ok]
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def _exact_similarity(store: FeatureStore, embedding: Embedding, pairs: np.ndarray, chunk_rows: int) -> np.ndarray:
    out = np.empty(len(pairs), np.float32)
    for s in range(0, len(pairs), chunk_rows):
        block = pairs[s:s + chunk_rows]
        wanted, inverse = np.unique(block.ravel(), return_inverse=True)
        Z = embedding.apply(store.features(wanted))[inverse.reshape(block.shape)]
        out[s:s + len(block)] = np.einsum("nd,nd->n", Z[:, 0], Z[:, 1])
    return out


def near_duplicates(store: FeatureStore, rows: _Rows, embedding: Embedding, sims: np.ndarray, idx: np.ndarray, *,
                    threshold: float, approximate: bool, chunk_rows: int) -> list[DuplicatePair]:
    """Pairs of different content whose exact centred cosine is >= `threshold`."""
    floor = threshold - (_APPROX_MARGIN if approximate else 1e-6)
    pairs = _candidates(sims, idx, rows.sha, floor)
    if not len(pairs):
        return []
    exact = _exact_similarity(store, embedding, pairs, chunk_rows)
    keep = exact >= threshold
    return [rows.pair("near", a, b, s) for (a, b), s in zip(pairs[keep].tolist(), exact[keep].tolist())]


def find_duplicates(store: FeatureStore, embedding: Embedding, sims: np.ndarray, idx: np.ndarray, *,
                    threshold: float, approximate: bool = False,
                    chunk_rows: int = 8192, rows: _Rows | None = None) -> list[DuplicatePair]:
    """Exact and near duplicate pairs, leaks first, then label conflicts, then by similarity."""
    rows = rows if rows is not None else _Rows(store)
    found = exact_duplicates(rows) + near_duplicates(store, rows, embedding, sims, idx, threshold=threshold,
                                                     approximate=approximate, chunk_rows=chunk_rows)
    return sorted(found, key=lambda p: p.rank_key)
