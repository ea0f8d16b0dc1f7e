"""The store file ``STORE.h5`` (layout in :mod:`featx.store`): its format constants, rows in memory
(:class:`Rows`, :class:`Skips`, :class:`StoreIndex`), opening and reading it with the checks that its
datasets agree with its attributes, and writing a complete new one (with its checksums).

Nothing here changes a store in place: :func:`_write_store_file` writes a new file under a temporary
name, which the writer then renames over ``STORE.h5``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from featx.fileio import fsync_path
from featx.store.checksums import (_CHECKSUM_KINDS, CHECKSUM_ROWS, _digest_attrs, _digest_column, _digest_total,
                                   _FeatureHasher)
from featx.store.errors import StoreError, StoreNotFound

FORMAT = "featx.store"
FORMAT_VERSION = 1  # checksums are an addition readers may ignore, so the format stays 1
FEATURE_DTYPES = ("float32", "float16")
_STR = h5py.string_dtype("utf-8")


@dataclass
class Rows:
    """A block of store rows in memory (labels as class names, '' when unlabelled)."""

    features: np.ndarray
    sha256: np.ndarray
    path: np.ndarray
    label: np.ndarray
    split: np.ndarray
    nbytes: np.ndarray
    mtime_ns: np.ndarray

    FIELDS = ("sha256", "path", "label", "split", "nbytes", "mtime_ns")

    @classmethod
    def empty(cls, dim: int, dtype: str = "float32") -> "Rows":
        return cls(np.zeros((0, dim), dtype), *(np.array([], "U1") for _ in range(4)),
                   np.array([], np.int64), np.array([], np.int64))

    def __len__(self) -> int:
        return len(self.sha256)

    @classmethod
    def concat(cls, blocks: Sequence["Rows"], dim: int, dtype: str) -> "Rows":
        if not blocks:
            return cls.empty(dim, dtype)
        return cls(
            np.concatenate([b.features.astype(dtype, copy=False) for b in blocks]),
            *(np.concatenate([getattr(b, f) for b in blocks]) for f in cls.FIELDS),
        )

    def take(self, index: np.ndarray) -> "Rows":
        return Rows(self.features[index], *(getattr(self, f)[index] for f in self.FIELDS))


@dataclass
class Skips:
    """Files that could not be used, with the reason (one entry per path)."""

    path: np.ndarray
    kind: np.ndarray
    reason: np.ndarray
    sha256: np.ndarray
    nbytes: np.ndarray
    mtime_ns: np.ndarray

    FIELDS = ("path", "kind", "reason", "sha256", "nbytes", "mtime_ns")

    @classmethod
    def from_records(cls, records: Sequence[dict]) -> "Skips":
        return cls(
            *(np.array([str(r.get(f, "")) for r in records], dtype=str) for f in cls.FIELDS[:4]),
            *(np.array([int(r.get(f, -1)) for r in records], dtype=np.int64) for f in cls.FIELDS[4:]),
        )

    def __len__(self) -> int:
        return len(self.path)

    def records(self) -> list[dict]:
        return [
            {f: (getattr(self, f)[i].item()) for f in self.FIELDS} for i in range(len(self))
        ]

    @classmethod
    def concat(cls, blocks: Sequence["Skips"]) -> "Skips":
        if not blocks:
            return cls.from_records([])
        return cls(*(np.concatenate([getattr(b, f) for b in blocks]) for f in cls.FIELDS))

    def take(self, index: np.ndarray) -> "Skips":
        return Skips(*(getattr(self, f)[index] for f in self.FIELDS))


def _last_per_key(keys: np.ndarray) -> np.ndarray:
    """Indices of the last occurrence of each key, in original order."""
    last: dict = {}
    for i, k in enumerate(keys.tolist()):
        last[k] = i
    return np.array(sorted(last.values()), dtype=np.int64)


class StoreIndex:
    """Lookup of what a store already holds: by path (with size/mtime) and by content hash."""

    def __init__(self, rows: Rows):
        self.rows = rows
        self.by_path = {p: i for i, p in enumerate(rows.path.tolist())}
        self.by_hash: dict[str, int] = {}
        for i, h in enumerate(rows.sha256.tolist()):
            self.by_hash.setdefault(h, i)

    def unchanged(self, relpath: str, nbytes: int, mtime_ns: int, label: str = "", split: str = "") -> bool:
        """Whether the store's row for `relpath` is still right: same size, mtime, label and split."""
        i = self.by_path.get(relpath)
        return i is not None and (self.rows.nbytes[i], self.rows.mtime_ns[i], self.rows.label[i],
                                  self.rows.split[i]) == (nbytes, mtime_ns, label, split)

    def split_of(self, relpath: str) -> str | None:
        i = self.by_path.get(relpath)
        return None if i is None else str(self.rows.split[i])

    def same_row(self, rows: Rows, i: int) -> bool:
        """Whether row `i` of `rows` is already here exactly (path, content, size, mtime, label, split)."""
        j = self.by_path.get(str(rows.path[i]))
        return j is not None and all(getattr(self.rows, f)[j] == getattr(rows, f)[i] for f in Rows.FIELDS)


def _read_str(ds) -> np.ndarray:
    return np.array(ds.asstr()[()], dtype=str) if len(ds) else np.array([], dtype=str)


def _read_meta(f: h5py.File) -> dict:
    return {
        "fingerprint": json.loads(f.attrs["fingerprint"]),
        "fingerprint_id": str(f.attrs["fingerprint_id"]),
        "feature_dtype": str(f.attrs["feature_dtype"]),
        "label_names": json.loads(f.attrs["label_names"]),
        "root": str(f.attrs.get("root", "")),
        "split_method": json.loads(f.attrs.get("split_method", "{}")),
        "random_weights": bool(f.attrs.get("random_weights", False)),
        "versions": json.loads(f.attrs.get("versions", "{}")),
        "created": str(f.attrs.get("created", "")),
        "updated": str(f.attrs.get("updated", "")),
        "cnn_rows_total": int(f.attrs.get("cnn_rows_total", 0)),
        "merged_parts": json.loads(f.attrs.get("merged_parts", "[]")),
        # merges of other stores (shards): {shard store_id: its cnn_rows_total counted here}
        "merged_shards": json.loads(f.attrs.get("merged_shards", "{}")),
        "store_id": str(f.attrs.get("store_id", "")),
    }


def refuse_folder(path: Path) -> None:
    """A folder given where a store (a file) is expected is the user's mistake: one clear line."""
    if path.is_dir():
        raise StoreNotFound(f"{str(path)!r} is a folder, not a featx store (the .h5 file that `featx extract DATA "
                            "--store STORE.h5` writes)")


def _open_main(path: Path) -> h5py.File:
    if not path.exists():
        raise StoreNotFound(f"store {str(path)!r} does not exist (create it with `featx extract`)")
    refuse_folder(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise StoreError(f"{path} is not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise StoreError(f"{path} is an HDF5 file but not a featx store (no format={FORMAT!r} attribute)")
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        f.close()
        raise StoreError(f"{path} has store format {version}; this featx reads up to {FORMAT_VERSION}")
    try:
        _check_layout(path, f)
    except BaseException:
        f.close()
        raise
    return f

_COLUMNS = ("sha256", "path", "label", "split", "nbytes", "mtime_ns")
_SKIP_COLUMNS = tuple(f"skipped/{c}" for c in ("path", "kind", "reason", "sha256", "nbytes", "mtime_ns"))


def _check_layout(path: Path, f: h5py.File) -> None:
    """Refuse a store whose datasets disagree with its own attributes (damaged, or edited outside
    featx): features of another width or dtype than the fingerprint says would silently feed a
    classifier the wrong numbers."""
    from featx.backbones import fingerprint_id

    def damaged(what: str) -> StoreError:
        return StoreError(f"store {path} is damaged or was edited outside featx: {what}; refusing to use it "
                          "(re-extract into a new store)")

    try:
        meta = _read_meta(f)
        dim = int(meta["fingerprint"]["feature_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(f"its attributes are incomplete or not valid JSON ({type(exc).__name__}: {exc})") from None
    if fingerprint_id(meta["fingerprint"]) != meta["fingerprint_id"]:
        raise damaged(f"attribute fingerprint does not hash to its fingerprint_id {meta['fingerprint_id']}")
    for name in ("features",) + _COLUMNS + _SKIP_COLUMNS:
        if not isinstance(f.get(name), h5py.Dataset):
            raise damaged(f"dataset /{name} is missing")
    feats = f["features"]
    if meta["feature_dtype"] not in FEATURE_DTYPES:
        raise damaged(f"attribute feature_dtype is {meta['feature_dtype']!r}, not one of {FEATURE_DTYPES}")
    if feats.dtype != np.dtype(meta["feature_dtype"]):
        raise damaged(f"/features holds {feats.dtype} but attribute feature_dtype says {meta['feature_dtype']}")
    if feats.ndim != 2 or feats.shape[1] != dim:
        raise damaged(f"/features has shape {feats.shape} but the fingerprint says {dim} features per row")
    n = feats.shape[0]
    for name in _COLUMNS:
        if f[name].shape != (n,):
            raise damaged(f"/{name} has shape {f[name].shape} for {n} feature rows")
    n_skip = f["skipped/path"].shape
    for name in _SKIP_COLUMNS:
        if f[name].shape != n_skip:
            raise damaged(f"/{name} has shape {f[name].shape}, /skipped/path {n_skip}")


def _read_main_rows_meta(f: h5py.File, label_names: list[str]) -> Rows:
    """All row columns except features (cheap: strings and ints), labels as names."""
    names = np.array(label_names + [""], dtype=str)  # index -1 → ""
    labels = f["label"][()]
    if len(labels) and (labels.min() < -1 or labels.max() >= len(label_names)):
        raise StoreError(f"store {f.filename} is damaged or was edited outside featx: /label holds values "
                         f"outside -1…{len(label_names) - 1} (the {len(label_names)} label_names)")
    return Rows(
        features=np.zeros((len(labels), 0), np.float32),  # placeholder; features stay on disk
        sha256=f["sha256"][()].astype(str),
        path=_read_str(f["path"]),
        label=names[labels] if len(labels) else np.array([], dtype=str),
        split=_read_str(f["split"]),
        nbytes=f["nbytes"][()],
        mtime_ns=f["mtime_ns"][()],
    )


def _read_skips(f: h5py.File) -> Skips:
    g = f["skipped"]
    return Skips(
        _read_str(g["path"]), _read_str(g["kind"]), _read_str(g["reason"]),
        g["sha256"][()].astype(str), g["nbytes"][()], g["mtime_ns"][()],
    )


def _write_store_file(
    target: Path,
    meta: dict,
    label_names: list[str],
    sources: list[tuple[h5py.Dataset | np.ndarray, np.ndarray]],
    rows_meta: Rows,
    skips: Skips,
) -> None:
    """Write a complete store to `target` (a temporary name); features are copied chunk by chunk.

    `sources` is a list of (features array or dataset, row indices to take) in output order;
    `rows_meta` holds the matching non-feature columns for all output rows.
    """
    dim = int(meta["fingerprint"]["feature_dim"])
    dtype = meta["feature_dtype"]
    n = len(rows_meta)
    label_index = {name: i for i, name in enumerate(label_names)}
    chunk_rows = max(1, min(max(n, 1), (1 << 20) // (dim * np.dtype(dtype).itemsize)))
    with h5py.File(target, "w", locking=False) as f:
        feats = f.create_dataset("features", (n, dim), dtype, maxshape=(None, dim), chunks=(chunk_rows, dim))
        hasher = _FeatureHasher(CHECKSUM_ROWS)
        pos = 0
        for src, index in sources:
            for start in range(0, len(index), 4096):
                sel = index[start:start + 4096]
                block = _take_rows(src, sel).astype(dtype, copy=False)
                feats[pos:pos + len(sel)] = block
                hasher.update(block)
                pos += len(sel)
        assert pos == n, (pos, n)
        f.create_dataset("sha256", data=rows_meta.sha256.astype("S64"), maxshape=(None,))
        f.create_dataset("path", data=rows_meta.path.astype(object), dtype=_STR, maxshape=(None,))
        labels = np.array([label_index[l] if l else -1 for l in rows_meta.label.tolist()], dtype=np.int32)
        f.create_dataset("label", data=labels, maxshape=(None,))
        f.create_dataset("split", data=rows_meta.split.astype(object), dtype=_STR, maxshape=(None,))
        f.create_dataset("nbytes", data=rows_meta.nbytes.astype(np.int64), maxshape=(None,))
        f.create_dataset("mtime_ns", data=rows_meta.mtime_ns.astype(np.int64), maxshape=(None,))
        g = f.create_group("skipped")
        for field in ("path", "kind", "reason"):
            g.create_dataset(field, data=getattr(skips, field).astype(object), dtype=_STR, maxshape=(None,))
        g.create_dataset("sha256", data=skips.sha256.astype("S64"), maxshape=(None,))
        g.create_dataset("nbytes", data=skips.nbytes.astype(np.int64), maxshape=(None,))
        g.create_dataset("mtime_ns", data=skips.mtime_ns.astype(np.int64), maxshape=(None,))
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fingerprint"] = json.dumps(meta["fingerprint"], sort_keys=True)
        f.attrs["fingerprint_id"] = meta["fingerprint_id"]
        f.attrs["feature_dtype"] = dtype
        f.attrs["label_names"] = json.dumps(label_names)
        f.attrs["root"] = meta.get("root") or ""
        f.attrs["split_method"] = json.dumps(meta.get("split_method") or {}, sort_keys=True)
        f.attrs["random_weights"] = bool(meta.get("random_weights", False))
        f.attrs["versions"] = json.dumps(meta.get("versions") or {}, sort_keys=True)
        f.attrs["created"] = meta.get("created") or now
        f.attrs["updated"] = now
        f.attrs["n_rows"] = n
        f.attrs["cnn_rows_total"] = int(meta.get("cnn_rows_total", 0))
        f.attrs["merged_parts"] = json.dumps(meta.get("merged_parts", []))
        f.attrs["merged_shards"] = json.dumps(meta.get("merged_shards", {}), sort_keys=True)
        # a store's identity across consolidations (a shard is counted once however often it is merged)
        f.attrs["store_id"] = meta.get("store_id") or uuid.uuid4().hex
        # checksums of exactly what was written (verify() recomputes them from the file)
        chunks = hasher.finish()
        columns = {name: _digest_column(kind, _column_source(name, rows_meta, labels, skips))
                   for name, kind in _CHECKSUM_KINDS.items()}
        attrs = _digest_attrs(f.attrs)
        c = f.create_group("checksum")
        c.create_dataset("features", data=np.array(chunks, dtype="S64").reshape(len(chunks)))
        c.attrs["algorithm"] = "sha256"
        c.attrs["rows_per_chunk"] = CHECKSUM_ROWS
        c.attrs["columns"] = json.dumps(columns, sort_keys=True)
        c.attrs["attrs"] = attrs
        c.attrs["total"] = _digest_total(n, dim, dtype, CHECKSUM_ROWS, chunks, columns, attrs)
    fsync_path(target)


def _column_source(name: str, rows_meta: Rows, labels: np.ndarray, skips: Skips):
    if name == "label":
        return labels
    if name.startswith("skipped/"):
        return getattr(skips, name.split("/", 1)[1])
    return getattr(rows_meta, name)


def _take_rows(src, index: np.ndarray) -> np.ndarray:
    """Rows `index` of an array or an h5py dataset (which wants increasing indices; slices are fastest)."""
    if isinstance(src, np.ndarray):
        return src[index]
    if len(index) and index[-1] - index[0] + 1 == len(index) and np.all(np.diff(index) == 1):
        return src[int(index[0]):int(index[-1]) + 1]
    unique, inverse = np.unique(index, return_inverse=True)
    if not len(unique):
        return np.zeros((0,) + src.shape[1:], src.dtype)
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    if hi - lo <= 4 * len(unique):
        # one slab read and an in-memory gather: h5py's point selection costs ~75 µs a row
        return src[lo:hi][unique - lo][inverse]
    return src[unique][inverse]
