"""The store's checksums: sha256 of each block of feature rows, of every row column and of the attributes
that give rows their meaning, and the total over them.

:func:`featx.store.layout._write_store_file` records them at every consolidation (hashing the features
as it copies them); :meth:`featx.store.reader.FeatureStore.verify` recomputes them from the file. This
module knows nothing else of the store.
"""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

CHECKSUM_ROWS = 1024  # feature rows per checksum block: a tampered value is located to 1024 rows

# Columns by how they are canonicalised for hashing, so that what is written and what h5py reads back
# hash alike: strings as a JSON list, content hashes as their 64 ASCII bytes, integers as int64 LE.
_CHECKSUM_KINDS = {
    "sha256": "hash", "path": "str", "label": "int", "split": "str", "nbytes": "int", "mtime_ns": "int",
    "skipped/path": "str", "skipped/kind": "str", "skipped/reason": "str", "skipped/sha256": "hash",
    "skipped/nbytes": "int", "skipped/mtime_ns": "int",
}
# the attributes that give rows their meaning (not `updated`, `versions`: they change nothing read)
_CHECKSUM_ATTRS = ("fingerprint", "fingerprint_id", "feature_dtype", "label_names", "root", "split_method",
                   "random_weights")


def _digest_column(kind: str, values) -> str:
    if kind == "str":
        data = json.dumps([str(v) for v in values], ensure_ascii=False).encode("utf-8", "surrogateescape")
    elif kind == "hash":
        data = np.asarray(values).astype("S64").tobytes()
    else:
        data = np.asarray(values).astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def _digest_attrs(attrs) -> str:
    canon = {k: (bool(attrs[k]) if k == "random_weights" else str(attrs[k])) for k in _CHECKSUM_ATTRS if k in attrs}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def _digest_total(n: int, dim: int, dtype: str, rows_per_chunk: int, chunks: list[str], columns: dict,
                  attrs: str) -> str:
    record = {"rows": n, "dim": dim, "dtype": dtype, "rows_per_chunk": rows_per_chunk, "features": chunks,
              "columns": columns, "attrs": attrs}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class _FeatureHasher:
    """sha256 of each block of `rows_per_chunk` feature rows (their little-endian bytes as stored),
    fed in pieces of any size: the store copy loop hashes what it writes, at no extra read."""

    def __init__(self, rows_per_chunk: int = CHECKSUM_ROWS):
        self.rows_per_chunk = rows_per_chunk
        self.digests: list[str] = []
        self._hash = hashlib.sha256()
        self._rows = 0

    def update(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
        i = 0
        while i < len(block):
            take = min(self.rows_per_chunk - self._rows, len(block) - i)
            self._hash.update(block[i:i + take])  # C-contiguous rows: hashed without a copy
            self._rows += take
            i += take
            if self._rows == self.rows_per_chunk:
                self.digests.append(self._hash.hexdigest())
                self._hash, self._rows = hashlib.sha256(), 0

    def finish(self) -> list[str]:
        if self._rows:
            self.digests.append(self._hash.hexdigest())
            self._hash, self._rows = hashlib.sha256(), 0
        return self.digests


def _hash_features(ds: h5py.Dataset, rows_per_chunk: int) -> list[str]:
    """The per-block digests of a stored features dataset, read in slabs of about 64 MB."""
    hasher = _FeatureHasher(rows_per_chunk)
    row_bytes = max(1, ds.shape[1] * ds.dtype.itemsize)
    slab = rows_per_chunk * max(1, (64 << 20) // (rows_per_chunk * row_bytes))
    for start in range(0, ds.shape[0], slab):
        hasher.update(ds[start:start + slab])
    return hasher.finish()
