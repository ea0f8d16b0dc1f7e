"""The HDF5 feature store: layout, crash-safe appends, the writer lock, checksums and the reader.

Layout of ``STORE.h5`` (plain HDF5, readable with h5py alone)::

    /features   (N, D) float32 or float16   one row per image
    /sha256     (N,)   fixed ASCII (64)      sha256 of the image file's bytes: the row key
    /path       (N,)   UTF-8                 path relative to the set's root (attr ``root``)
    /label      (N,)   int32                 index into attr ``label_names`` (-1: no label)
    /split      (N,)   UTF-8                 "train", "validation", "test" or ""
    /nbytes, /mtime_ns (N,) int64            file size and mtime when read (cheap change check)
    /skipped/{path,kind,reason,sha256}, /skipped/{nbytes,mtime_ns}   files that could not be used
    /checksum/features (ceil(N/R),) ASCII(64) sha256 of each block of R feature rows (R: attr rows_per_chunk)
    /checksum attrs: algorithm ("sha256"), rows_per_chunk, columns (JSON {dataset: sha256}),
                     attrs (sha256 of the attributes that give rows their meaning), total
    attrs: format, format_version, fingerprint (JSON), fingerprint_id, feature_dtype, label_names
           (JSON), root, split_method (JSON), random_weights, versions (JSON), created, updated

Crash safety. ``STORE.h5`` is never modified in place. While extracting, every batch is written to
``STORE.h5.journal/part-*.npz`` (temporary name, fsync, atomic rename, directory fsync), so a kill -9
loses at most the batch in flight. At the end of a run (and at the start of the next one, after a
crash) the journal is *consolidated*: a new ``STORE.h5`` is written beside the old one and atomically
renamed over it; then the parts are deleted. Replaying a part twice is harmless because rows are
keyed by path (the newest row for a path wins) and the parts of the last merge are recorded
(attr ``merged_parts``) so they are not counted twice. Readers see the consolidated file plus any
committed parts. Temporary files of a killed writer are removed by the next writer.

Disk full. A write that fails for lack of space (ENOSPC, EDQUOT) raises :class:`StoreFull` naming
the store; its temporary file is removed, everything committed before stays readable, and a rerun
after freeing space completes the store.

Integrity. Every consolidation records sha256 checksums of the features (per block of rows), of every
row column and of the meaning-giving attributes; :meth:`FeatureStore.verify` (``featx info
--verify``) recomputes them and names what differs. They detect damage and edits made without featx;
they are not a signature (whoever can write the file can also rewrite its checksums).

Concurrency. One writer at a time: writers hold ``STORE.h5.lock`` (an OS file lock, released if the
holder dies); a second writer is refused at once. Readers take no lock and may read during a write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from featx.errors import InputNotFound

FORMAT = "featx.store"
FORMAT_VERSION = 1  # checksums are an addition readers may ignore, so the format stays 1
FEATURE_DTYPES = ("float32", "float16")
CHECKSUM_ROWS = 1024  # feature rows per checksum block: a tampered value is located to 1024 rows
_STR = h5py.string_dtype("utf-8")
log = logging.getLogger("featx")


class StoreError(Exception):
    """A store cannot be used as asked (missing, not a featx store, damaged)."""


class FingerprintMismatch(StoreError):
    """The store was made with another backbone configuration than the one at hand."""


class StoreNotFound(StoreError, InputNotFound):
    """The path given as a store does not exist, or is a folder."""


class StoreLocked(StoreError):
    """Another process is writing to the store."""


class StoreFull(StoreError, OSError):
    """The disk (or quota) ran out while writing; what was committed before is intact."""


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc))


def _disk_full_error(store: Path, what: str) -> StoreFull:
    err = StoreFull(
        f"no space left on device while {what} of store {store}; everything committed before is intact "
        "and readable. Free some space and rerun the same command: it continues where this run stopped"
    )
    err.errno = errno.ENOSPC  # still recognisable as a disk-full OSError by callers that check errno
    return err


_crash_hits: Counter = Counter()


def crash_point(name: str) -> None:
    """TEST-ONLY fault injection: ``FEATX_TEST_CRASH_AT=<name>:<n>`` SIGKILLs this process the n-th
    time it reaches point `name`, so tests can kill -9 at exact moments. A no-op otherwise."""
    spec = os.environ.get("FEATX_TEST_CRASH_AT")
    if not spec or spec.partition(":")[0] != name:
        return
    _crash_hits[name] += 1
    if _crash_hits[name] == int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def journal_dir(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.journal")


def lock_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.lock")


def describe_fingerprint_difference(expected: dict, actual: dict) -> str:
    keys = sorted(set(expected) | set(actual))
    diffs = [f"{k}: {expected.get(k)!r} vs {actual.get(k)!r}" for k in keys if expected.get(k) != actual.get(k)]
    return "; ".join(diffs)


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_path(path)
    except OSError:  # some file systems do not support fsync on directories
        pass


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


def _open_main(path: Path) -> h5py.File:
    if not path.exists():
        raise StoreNotFound(f"store {str(path)!r} does not exist (create it with `featx extract`)")
    if path.is_dir():
        raise StoreNotFound(f"{str(path)!r} is a folder, not a featx store (the .h5 file that `featx extract DATA "
                            "--store STORE.h5` writes)")
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


def _file_identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _list_parts(path: Path) -> list[Path]:
    jdir = journal_dir(path)
    if not jdir.is_dir():
        return []
    return sorted(jdir.glob("part-*.npz"))


class _PartVanished(StoreError):
    """A journal part was merged and removed by a writer between listing and reading."""


def _load_part(part: Path) -> tuple[Rows, Skips, str, int]:
    try:
        with np.load(part, allow_pickle=False) as z:
            rows = Rows(z["features"], *(z[f] for f in Rows.FIELDS))
            skips = Skips(*(z["skip_" + f] for f in Skips.FIELDS))
            fid = str(z["fingerprint_id"])
            n_computed = int(z["n_computed"]) if "n_computed" in z.files else 0
    except FileNotFoundError:
        raise _PartVanished(str(part)) from None
    except Exception as exc:  # a part is renamed into place only when complete, so this is disk damage
        raise StoreError(
            f"journal part {part} is unreadable ({type(exc).__name__}: {exc}); move it away to continue"
        ) from None
    return rows, skips, fid, n_computed


def load_journal(path: Path, fingerprint_id: str, dim: int, dtype: str) -> tuple[Rows, Skips, list[tuple[str, int]]]:
    """Committed journal rows and skips, and (part name, rows computed by the CNN) per part."""
    row_blocks, skip_blocks, counts = [], [], []
    for part in _list_parts(path):
        rows, skips, fid, n_computed = _load_part(part)
        if fid != fingerprint_id:
            raise FingerprintMismatch(f"journal part {part} belongs to another backbone ({fid})")
        row_blocks.append(rows)
        skip_blocks.append(skips)
        counts.append((part.name, n_computed))
    return Rows.concat(row_blocks, dim, dtype), Skips.concat(skip_blocks), counts


# -- checksums ----------------------------------------------------------------------------------
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


def _read_column(f: h5py.File, name: str):
    ds = f[name]
    if _CHECKSUM_KINDS[name] == "str":
        return _read_str(ds).tolist()
    return ds[()]


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
    _fsync_path(target)


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


def _replace_atomically(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    _fsync_dir(target.parent)


class StoreWriter:
    """Appends rows to a store under an exclusive lock; see the module docstring for guarantees."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: dict,
        fingerprint_id: str,
        feature_dtype: str = "float32",
        root: str | None = None,
        split_method: dict | None = None,
        random_weights: bool = False,
        versions: dict | None = None,
        lock_timeout: float | None = 0,
    ):
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
        self.path = Path(path)
        self.meta = {
            "fingerprint": fingerprint,
            "fingerprint_id": fingerprint_id,
            "feature_dtype": feature_dtype,
            "root": root,
            "split_method": split_method or {},
            "random_weights": random_weights,
            "versions": versions or {},
        }
        self.dim = int(fingerprint["feature_dim"])
        self._lock = None
        self._lock_timeout = lock_timeout  # 0: refuse at once; None: wait for the other writer
        self._seq = 0
        self._run_id = f"{time.time_ns():020d}-{os.getpid()}"
        self._merged_shards: dict[str, int] = {}  # staged by record_merged, written by consolidate
        self.rows_written = 0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error_in_flight=exc_type is not None)

    def open(self) -> None:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path(self.path)))
        try:
            lock.acquire(timeout=-1 if self._lock_timeout is None else self._lock_timeout)
        except Timeout:
            raise StoreLocked(
                f"store {self.path} is being written by another featx process (lock {lock_path(self.path)} "
                "is held); wait for it to finish — readers may open the store meanwhile"
            ) from None
        self._lock = lock
        try:
            # consolidation files of a killed writer: never renamed into place, so never part of the store
            for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
                stale.unlink(missing_ok=True)
            if self.path.exists():
                self._check_compatible()
                self.consolidate()  # recover rows a killed run left in the journal
            else:
                self._write_empty()
            journal_dir(self.path).mkdir(exist_ok=True)
            for stale in journal_dir(self.path).glob(".tmp-*"):
                stale.unlink(missing_ok=True)  # half-written parts of a killed run: never committed
        except BaseException:
            self._release()
            raise

    def close(self, *, error_in_flight: bool = False) -> None:
        """Consolidate the journal and release the lock.

        With `error_in_flight` (the run is failing anyway, e.g. the disk is full) a failed
        consolidation is only logged, so the caller sees the original error; the committed journal
        stays readable and the next writer merges it.
        """
        try:
            if self._lock is not None:
                try:
                    self.consolidate()
                except Exception as exc:
                    if not error_in_flight:
                        raise
                    log.warning("could not merge the journal of %s (%s); its committed batches stay "
                                "readable and the next run merges them", self.path, exc)
                else:
                    # An empty journal is only clutter beside the store. Removed under the lock, so no
                    # writer is appending; rmdir fails (and we keep it) if anything is still inside.
                    with contextlib.suppress(OSError):
                        journal_dir(self.path).rmdir()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- checks ------------------------------------------------------------------------------
    def check_compatible(self) -> None:
        """Refuse now, without taking the lock, what `open` would refuse: an existing store of another
        fingerprint, feature dtype or split (lets a distributed run fail before any work is sent out)."""
        if self.path.exists():
            self._check_compatible()

    def _check_compatible(self) -> None:
        with _open_main(self.path) as f:
            existing = _read_meta(f)
        if existing["fingerprint_id"] != self.meta["fingerprint_id"] or existing["fingerprint"] != self.meta["fingerprint"]:
            raise FingerprintMismatch(
                f"store {self.path} was made with a different backbone configuration; refusing to mix "
                f"features ({describe_fingerprint_difference(existing['fingerprint'], self.meta['fingerprint'])}). "
                "Use another --store, or the store's own settings (see `featx info`)."
            )
        if existing["feature_dtype"] != self.meta["feature_dtype"]:
            raise StoreError(
                f"store {self.path} holds {existing['feature_dtype']} features; asked for "
                f"{self.meta['feature_dtype']} (use --dtype {existing['feature_dtype']} or another store)"
            )
        old_split, new_split = existing["split_method"], self.meta["split_method"]
        if old_split and new_split and old_split != new_split:
            raise StoreError(
                f"store {self.path} was split with {old_split}; this run asks for {new_split}. Changing "
                "the split of a store would mix train and evaluation images; use another --store"
            )
        self.meta["created"] = existing["created"]
        self.meta["split_method"] = new_split or old_split
        if not self.meta["root"]:
            self.meta["root"] = existing["root"]

    def _write_empty(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        empty = Rows.empty(self.dim, self.meta["feature_dtype"])
        try:
            _write_store_file(tmp, self.meta, [], [], empty, Skips.from_records([]))
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if _is_disk_full(exc):
                raise _disk_full_error(self.path, "creating the empty store") from None
            raise
        _replace_atomically(tmp, self.path)

    # -- what is already there -----------------------------------------------------------
    def index(self) -> "StoreIndex":
        """Paths and hashes already in the store (the consolidated file; the journal is empty here)."""
        with _open_main(self.path) as f:
            meta = _read_meta(f)
            rows = _read_main_rows_meta(f, meta["label_names"])
        return StoreIndex(rows)

    def read_features(self, rows: np.ndarray) -> np.ndarray:
        """Features of consolidated rows `rows` (any order)."""
        with _open_main(self.path) as f:
            return _take_rows(f["features"], np.asarray(rows, np.int64)).astype(np.float32)

    # -- writing ---------------------------------------------------------------------------
    def append(self, rows: Rows, skips: Skips | None = None, *, n_computed: int = 0) -> None:
        """Commit one block durably (temporary file, fsync, atomic rename into the journal).

        `n_computed` is how many of the rows went through the CNN (the rest reused stored features);
        the store keeps the running total in its ``cnn_rows_total`` attribute.
        """
        if self._lock is None:
            raise StoreError("store writer is not open")
        skips = skips if skips is not None else Skips.from_records([])
        if len(rows) == 0 and len(skips) == 0:
            return
        if rows.features.shape[1:] != (self.dim,):
            raise ValueError(f"features of width {rows.features.shape[1:]} for a store of width {self.dim}")
        self._seq += 1
        jdir = journal_dir(self.path)
        name = f"part-{self._run_id}-{self._seq:08d}.npz"
        tmp = jdir / f".tmp-{name}"
        try:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    features=rows.features.astype(self.meta["feature_dtype"], copy=False),
                    **{f: np.asarray(getattr(rows, f)) for f in Rows.FIELDS},
                    **{"skip_" + f: np.asarray(getattr(skips, f)) for f in Skips.FIELDS},
                    fingerprint_id=np.array(self.meta["fingerprint_id"]),
                    n_computed=np.array(int(n_computed)),
                )
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException as exc:
            tmp.unlink(missing_ok=True)  # never leave a half part behind (it would only waste space)
            if _is_disk_full(exc):
                raise _disk_full_error(self.path, f"writing journal part {self._seq}") from None
            raise
        crash_point("part-written")
        os.replace(tmp, jdir / name)
        _fsync_dir(jdir)  # the rename itself survives a power cut, not only a kill
        crash_point("part-committed")
        self.rows_written += len(rows)

    def record_merged(self, store_id: str, cnn_rows_total: int) -> None:
        """Stage that the rows of store `store_id` (a shard) were appended, with the rows its CNN
        computed; the next consolidation adds what was not counted before to ``cnn_rows_total``."""
        if self._lock is None:
            raise StoreError("store writer is not open")
        self._merged_shards[store_id] = int(cnn_rows_total)

    def consolidate(self, prune_paths: set[str] | None = None) -> int:
        """Merge the journal into a new STORE.h5 and atomically replace the old one.

        `prune_paths`, when given, is the set of paths to keep (rows of other paths are dropped).
        Returns the number of journal parts merged.
        """
        parts = _list_parts(self.path)
        if not parts and prune_paths is None:
            with _open_main(self.path) as f:
                recorded = _read_meta(f)["merged_shards"]
                if "checksum" in f and all(recorded.get(k) == v for k, v in self._merged_shards.items()):
                    return 0
            # a store from a featx without checksums: rewrite it once so `info --verify` can check it
        dtype = self.meta["feature_dtype"]
        new_rows, new_skips, counts = load_journal(self.path, self.meta["fingerprint_id"], self.dim, dtype)
        with _open_main(self.path) as f:
            old_meta = _read_meta(f)
            # parts named in the last merge are a replay after a crash: do not count them twice
            already = set(old_meta["merged_parts"])
            # merged shards add what their CNN computed since they were last merged here, recorded in
            # the same file as their rows (a crash before the rename leaves both uncounted)
            shards = dict(old_meta["merged_shards"])
            shard_rows = sum(max(0, n - shards.get(k, 0)) for k, n in self._merged_shards.items())
            shards.update(self._merged_shards)
            self.meta["cnn_rows_total"] = old_meta["cnn_rows_total"] + shard_rows + sum(
                n for name, n in counts if name not in already)
            self.meta["merged_parts"] = [name for name, _ in counts]
            self.meta["merged_shards"] = shards
            self.meta["store_id"] = old_meta["store_id"] or self.meta.get("store_id") or uuid.uuid4().hex
            old_rows = _read_main_rows_meta(f, old_meta["label_names"])
            old_skips = _read_skips(f)
            # newest row per path wins: journal rows replace consolidated rows of the same path
            new_keep = _last_per_key(new_rows.path)
            new_rows = new_rows.take(new_keep)
            replaced = set(new_rows.path.tolist())
            old_keep = np.array([i for i, p in enumerate(old_rows.path.tolist()) if p not in replaced], np.int64)
            if prune_paths is not None:
                old_keep = np.array([i for i in old_keep if old_rows.path[i] in prune_paths], np.int64)
                new_rows = new_rows.take(np.array(
                    [i for i, p in enumerate(new_rows.path.tolist()) if p in prune_paths], np.int64))
            meta_rows = Rows(
                np.zeros((0, 0)),
                *(np.concatenate([getattr(old_rows, fld)[old_keep], getattr(new_rows, fld)]) for fld in Rows.FIELDS),
            )
            have_rows = set(meta_rows.path.tolist())
            all_skips = Skips.concat([old_skips, new_skips])
            keep_skips = _last_per_key(all_skips.path)
            keep_skips = np.array([i for i in keep_skips if all_skips.path[i] not in have_rows
                                   and (prune_paths is None or all_skips.path[i] in prune_paths)], np.int64)
            skips = all_skips.take(keep_skips)
            labels = sorted(set(old_meta["label_names"]) | {l for l in meta_rows.label.tolist() if l})
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            try:
                _write_store_file(
                    tmp, self.meta, labels,
                    [(f["features"], old_keep), (new_rows.features, np.arange(len(new_rows)))],
                    meta_rows, skips,
                )
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                if _is_disk_full(exc):
                    raise _disk_full_error(
                        self.path, f"merging {len(parts)} journal parts (this needs room for a second copy)"
                    ) from None
                raise
        crash_point("consolidate-written")
        _replace_atomically(tmp, self.path)
        crash_point("consolidate-replaced")
        for part in parts:  # only after the new file is in place: a crash here just replays them
            part.unlink(missing_ok=True)
        return len(parts)


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


class FeatureStore:
    """Read a featx store: the consolidated rows plus any committed journal rows.

    Example (after ``featx demo``)::

        with FeatureStore("cache/demo/digits_mobilenet_0.25.h5") as store:
            X, y = store.split("train")                 # features and class indices of one split
            names = store.label_names                   # class names, y indexes into them
            for X_chunk, y_chunk, rows in store.iter_chunks(4096, split="train"):
                ...                                     # bounded memory
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        for attempt in range(5):
            before = _file_identity(self.path)
            self._file = _open_main(self.path)
            try:
                meta = _read_meta(self._file)
                self._meta = meta
                main = _read_main_rows_meta(self._file, meta["label_names"])
                journal, jskips, counts = load_journal(
                    self.path, meta["fingerprint_id"], int(meta["fingerprint"]["feature_dim"]),
                    meta["feature_dtype"],
                )
                # A writer that replaced STORE.h5 after we opened it may have deleted the parts it merged
                # before we listed them: we would miss those rows. Same file before and after: consistent.
                if _file_identity(self.path) != before:
                    raise _PartVanished(str(self.path))
                break
            except _PartVanished:
                # a writer consolidated while we read: its parts are now in a newer STORE.h5
                self._file.close()
                if attempt == 4:
                    raise StoreError(f"store {self.path} kept changing while being opened; try again")
            except BaseException:
                self._file.close()
                raise
        self.pending_parts = len(counts)
        self.cnn_rows_total = meta["cnn_rows_total"] + sum(
            n for name, n in counts if name not in set(meta["merged_parts"]))
        journal = journal.take(_last_per_key(journal.path))
        replaced = set(journal.path.tolist())
        self._main_index = np.array([i for i, p in enumerate(main.path.tolist()) if p not in replaced], np.int64)
        self._journal = journal
        self._rows = Rows(
            np.zeros((0, 0)),
            *(np.concatenate([getattr(main, f)[self._main_index], getattr(journal, f)]) for f in Rows.FIELDS),
        )
        label_names = sorted(set(meta["label_names"]) | {l for l in journal.label.tolist() if l})
        self._label_names = label_names
        lookup = {n: i for i, n in enumerate(label_names)}
        self._y = np.array([lookup[l] if l else -1 for l in self._rows.label.tolist()], dtype=np.int64)
        all_skips = Skips.concat([_read_skips(self._file), jskips])
        have = set(self._rows.path.tolist())
        keep = [i for i in _last_per_key(all_skips.path) if all_skips.path[i] not in have]
        self._skips = all_skips.take(np.array(keep, np.int64))

    # -- context manager -----------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, n={len(self)}, backbone={self.fingerprint['backbone']!r}, "
                f"dim={self.feature_dim})")

    # -- metadata ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        return dict(self._meta["fingerprint"])

    @property
    def fingerprint_id(self) -> str:
        return self._meta["fingerprint_id"]

    @property
    def feature_dim(self) -> int:
        return int(self._meta["fingerprint"]["feature_dim"])

    @property
    def feature_dtype(self) -> str:
        return self._meta["feature_dtype"]

    @property
    def label_names(self) -> list[str]:
        return list(self._label_names)

    @property
    def root(self) -> str:
        return self._meta["root"]

    @property
    def split_method(self) -> dict:
        return dict(self._meta["split_method"])

    @property
    def random_weights(self) -> bool:
        return self._meta["random_weights"]

    @property
    def versions(self) -> dict:
        return dict(self._meta["versions"])

    @property
    def store_id(self) -> str:
        """This store's identity, kept across consolidations ('' for a store never consolidated since
        featx recorded one)."""
        return self._meta["store_id"]

    @property
    def created(self) -> str:
        return self._meta["created"]

    def index(self) -> StoreIndex:
        """What the store holds, by path (with size and mtime) and by content hash."""
        return StoreIndex(self._rows)

    # -- rows ------------------------------------------------------------------------------
    @property
    def paths(self) -> np.ndarray:
        return self._rows.path.copy()

    @property
    def sha256(self) -> np.ndarray:
        return self._rows.sha256.copy()

    @property
    def splits(self) -> np.ndarray:
        return self._rows.split.copy()

    @property
    def y(self) -> np.ndarray:
        """Integer labels (indices into `label_names`; -1 for unlabelled rows)."""
        return self._y.copy()

    @property
    def X(self) -> np.ndarray:
        return self.features(np.arange(len(self)))

    @property
    def skipped(self) -> list[dict]:
        return self._skips.records()

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Features of the given row indices, as float32, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.feature_dim), np.float32)
        n_main = len(self._main_index)
        in_main = rows < n_main
        if in_main.any():
            out[in_main] = _take_rows(self._file["features"], self._main_index[rows[in_main]])
        if (~in_main).any():
            out[~in_main] = self._journal.features[rows[~in_main] - n_main]
        return out

    def split_index(self, split: str) -> np.ndarray:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, got {split!r}")
        return np.flatnonzero(self._rows.split == split)

    def split(self, split: str, *, labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of one split; with `labelled`, rows without a label are left out."""
        index = self.split_index(split)
        if labelled:
            index = index[self._y[index] >= 0]
        return self.features(index), self._y[index]

    def iter_chunks(self, chunk_size: int = 4096, split: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (X, y, row_index) blocks of at most `chunk_size` rows without loading everything."""
        index = self.split_index(split) if split else np.arange(len(self))
        for start in range(0, len(index), chunk_size):
            rows = index[start:start + chunk_size]
            yield self.features(rows), self._y[rows], rows

    def to_pandas(self, split: str | None = None):
        """A pandas DataFrame: path, label (class name), split, sha256 and one column per feature."""
        import pandas as pd

        index = self.split_index(split) if split else np.arange(len(self))
        names = np.array(self._label_names + [None], dtype=object)
        meta = pd.DataFrame({
            "path": self._rows.path[index], "label": names[self._y[index]], "split": self._rows.split[index],
            "sha256": self._rows.sha256[index],
        })
        width = len(str(self.feature_dim - 1))
        feats = pd.DataFrame(self.features(index), columns=[f"f{i:0{width}d}" for i in range(self.feature_dim)])
        return pd.concat([meta, feats], axis=1)

    def label_conflicts(self) -> list[dict]:
        """Identical file content recorded under different labels (probable label noise)."""
        groups: dict[str, set] = {}
        paths: dict[str, list] = {}
        for h, lab, p in zip(self._rows.sha256.tolist(), self._rows.label.tolist(), self._rows.path.tolist()):
            groups.setdefault(h, set()).add(lab)
            paths.setdefault(h, []).append(p)
        return [
            {"sha256": h, "labels": sorted(labs), "paths": sorted(paths[h])}
            for h, labs in groups.items() if len(labs) > 1
        ]

    def info(self) -> dict:
        """A JSON-able summary (what `featx info --json` prints)."""
        skipped = self.skipped
        return {
            "path": str(self.path),
            "n_images": len(self),
            "n_skipped": len(skipped),
            "skipped": [{"path": s["path"], "kind": s["kind"], "reason": s["reason"]} for s in skipped],
            "skipped_by_kind": dict(Counter(s["kind"] for s in skipped)),
            "splits": dict(Counter(self._rows.split.tolist())),
            "labels": {name: int((self._y == i).sum()) for i, name in enumerate(self._label_names)},
            "label_names": self.label_names,
            "backbone": self.fingerprint["backbone"],
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            "random_weights": self.random_weights,
            "feature_dim": self.feature_dim,
            "feature_dtype": self.feature_dtype,
            "root": self.root,
            "split_method": self.split_method,
            "pending_journal_parts": self.pending_parts,
            "checksum_recorded": "checksum" in self._file,
            "cnn_rows_total": self.cnn_rows_total,
            "label_conflicts": self.label_conflicts(),
            "versions": self.versions,
            "created": self._meta["created"],
            "updated": self._meta["updated"],
        }

    def verify(self) -> dict:
        """Recompute the checksums recorded at the last consolidation and compare them (``featx info
        --verify``). Returns a JSON-able report: ``status`` is "ok", "mismatch" (with ``bad_chunks``
        as row ranges, ``bad_columns`` and ``attrs_ok`` saying what differs) or "no_checksum" (a store
        from a featx that recorded none; the next ``featx extract`` into it records one).

        Journal parts not yet consolidated are not covered here; their zip CRCs were checked when the
        store was opened, and they get a checksum at the next consolidation.
        """
        started = time.perf_counter()
        f = self._file
        n, dim = f["features"].shape
        report: dict = {"path": str(self.path), "status": "no_checksum", "ok": False, "rows": int(n),
                        "feature_chunks": 0, "rows_per_chunk": None, "bad_chunks": [], "bad_columns": [],
                        "attrs_ok": None, "pending_journal_parts": self.pending_parts}
        group = f.get("checksum")
        if not isinstance(group, h5py.Group):
            report["message"] = (f"no checksum recorded in {self.path} (written by a featx without checksums); "
                                 "run `featx extract` into it once to record one")
            report["seconds"] = time.perf_counter() - started
            return report
        report["status"] = "mismatch"
        try:
            rows_per_chunk = int(group.attrs["rows_per_chunk"])
            recorded_chunks = [d.decode("ascii") for d in group["features"][()].tolist()]
            recorded_columns = json.loads(group.attrs["columns"])
            recorded_attrs, recorded_total = str(group.attrs["attrs"]), str(group.attrs["total"])
            if rows_per_chunk < 1 or not isinstance(recorded_columns, dict):
                raise ValueError("bad values")
        except (KeyError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as exc:
            report["message"] = f"MISMATCH: the checksum record of {self.path} is damaged ({type(exc).__name__}: {exc})"
            report["seconds"] = time.perf_counter() - started
            return report
        report["rows_per_chunk"] = rows_per_chunk
        chunks = _hash_features(f["features"], rows_per_chunk)
        report["feature_chunks"] = len(chunks)
        for i in range(max(len(chunks), len(recorded_chunks))):
            got = chunks[i] if i < len(chunks) else None
            want = recorded_chunks[i] if i < len(recorded_chunks) else None
            if got != want:
                report["bad_chunks"].append({"chunk": i, "rows": [i * rows_per_chunk,
                                                                  min(n, (i + 1) * rows_per_chunk) - 1]})
        columns = {name: _digest_column(kind, _read_column(f, name)) for name, kind in _CHECKSUM_KINDS.items()}
        report["bad_columns"] = sorted(k for k in set(columns) | set(recorded_columns)
                                       if columns.get(k) != recorded_columns.get(k))
        attrs = _digest_attrs(f.attrs)
        report["attrs_ok"] = attrs == recorded_attrs
        # the record must hang together too (chunk digests edited to match edited features, etc.)
        record_ok = recorded_total == _digest_total(int(n), int(dim), str(f["features"].dtype), rows_per_chunk,
                                                    recorded_chunks, recorded_columns, recorded_attrs)
        ok = record_ok and not report["bad_chunks"] and not report["bad_columns"] and report["attrs_ok"]
        report["ok"] = bool(ok)
        report["status"] = "ok" if ok else "mismatch"
        if ok:
            blocks = f"{len(chunks)} feature block{'s' if len(chunks) != 1 else ''} of {rows_per_chunk} rows"
            report["message"] = (f"OK: {n} rows ({blocks}), {len(columns)} columns and the attributes match "
                                 "the recorded checksums")
        else:
            what = [f"features of rows {b['rows'][0]}–{b['rows'][1]}" for b in report["bad_chunks"][:10]]
            if len(report["bad_chunks"]) > 10:
                what.append(f"… {len(report['bad_chunks']) - 10} more feature blocks")
            what += [f"column /{c}" for c in report["bad_columns"]]
            if not report["attrs_ok"]:
                what.append("the attributes (" + ", ".join(_CHECKSUM_ATTRS) + ")")
            if not what:
                what.append("the checksum record itself")
            report["message"] = (f"MISMATCH: {self.path} changed after it was written: " + "; ".join(what)
                                 + " differ from the checksums recorded at consolidation")
        if self.pending_parts:
            report["message"] += (f" ({self.pending_parts} journal parts not yet consolidated are not covered; "
                                  "their zip CRCs were checked on open)")
        report["seconds"] = time.perf_counter() - started
        return report


# -- merging stores (the shards of a distributed extraction) --------------------------------------------
@dataclass
class MergeReport:
    """What :func:`merge_stores` did."""

    store: str
    shards: list[str]
    rows_added: int = 0  # rows new to the store, or replacing an older row of the same path
    rows_unchanged: int = 0  # already in the store exactly (a second merge adds nothing)
    rows_stale: int = 0  # the store's row of that path was read from a newer file (mtime): kept
    rows_outside: int = 0  # not among the paths asked for (`only_paths`)
    skips_added: int = 0
    cnn_rows_added: int = 0  # CNN work of the shards not counted in the store before
    n_store_rows: int = 0
    removed: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))

    def format(self) -> str:
        return (f"merged {len(self.shards)} shard store{'s' if len(self.shards) != 1 else ''} into {self.store}: "
                f"{self.rows_added} rows added, {self.rows_unchanged} already there, {self.rows_stale} older "
                f"than the store's, {self.skips_added} skipped files recorded; {self.n_store_rows} rows now "
                f"({self.seconds:.1f} s)" + ("; shard stores removed" if self.removed else ""))


def merge_stores(
    store: str | os.PathLike,
    shards: Sequence[str | os.PathLike],
    *,
    only_paths: set[str] | None = None,
    prune_paths: set[str] | None = None,
    remove: bool = False,
    lock_timeout: float | None = 0,
    chunk_rows: int = 4096,
) -> MergeReport:
    """Append the rows and skipped files of other stores (shards of one image set) to `store`.

    Everything goes through a :class:`StoreWriter` (journal + atomic consolidation, the writer lock),
    so a merge killed at any moment leaves `store` readable and a rerun completes it; afterwards
    `store` is an ordinary store. Shards must agree with each other and with `store` on the backbone
    fingerprint, feature dtype, split method and root (the folder paths are relative to); otherwise
    nothing is merged. A row already in `store` exactly is not written again, so merging twice changes
    nothing; a shard row replaces the store's row of the same path unless the store's row was read
    from a newer file (mtime). Each shard is locked while it is read (a shard still being written is
    refused). `only_paths` restricts the merge to those paths, `prune_paths` (the paths to keep)
    drops the others in the same consolidation, and `remove` deletes the shard stores after
    the merged store is in place. Memory: one block of `chunk_rows` feature rows at a time.
    """
    from filelock import FileLock, Timeout

    started = time.perf_counter()
    target = Path(store)
    paths = list({Path(s).resolve(): Path(s) for s in shards}.values())  # each shard once
    if not paths:
        raise StoreError(f"nothing to merge into {target}: no shard stores given")
    if target.exists() and any(p.resolve() == target.resolve() for p in paths):
        raise StoreError(f"cannot merge store {target} into itself")
    metas = []
    for p in paths:
        with _open_main(p) as f:
            metas.append(_read_meta(f))
    first = metas[0]
    existing = None
    if target.exists():
        with _open_main(target) as f:
            existing = _read_meta(f)
    for p, m in zip(paths, metas):
        if m["fingerprint_id"] != first["fingerprint_id"] or m["fingerprint"] != first["fingerprint"]:
            raise FingerprintMismatch(
                f"shard {p} was made with another backbone configuration than shard {paths[0]}; refusing to "
                f"mix features ({describe_fingerprint_difference(first['fingerprint'], m['fingerprint'])})")
        if m["feature_dtype"] != first["feature_dtype"]:
            raise StoreError(f"shard {p} holds {m['feature_dtype']} features, shard {paths[0]} "
                             f"{first['feature_dtype']}; refusing to merge them")
        if m["split_method"] and first["split_method"] and m["split_method"] != first["split_method"]:
            raise StoreError(f"shard {p} was split with {m['split_method']}, shard {paths[0]} with "
                             f"{first['split_method']}; refusing to mix splits")
        # paths are relative to the root: rows of two roots would silently name other files
        for other, where in ((first, f"shard {paths[0]}"), (existing, f"store {target}")):
            if other and other["root"] and m["root"] and other["root"] != m["root"]:
                raise StoreError(f"shard {p} has root {m['root']!r} but {where} has {other['root']!r}; "
                                 "its paths would name other files; refusing to merge")
    report = MergeReport(str(target), [str(p) for p in paths])
    split_method = next((m["split_method"] for m in metas if m["split_method"]), {})
    root = next((m["root"] for m in metas if m["root"]), "") or None
    locks: list = []
    try:
        for p in paths:
            lock = FileLock(str(lock_path(p)))
            try:
                lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout)
            except Timeout:
                raise StoreLocked(f"shard {p} is being written by another featx process (lock {lock_path(p)} is "
                                  "held); merge it when its extraction has finished") from None
            locks.append(lock)
        writer = StoreWriter(
            target, fingerprint=first["fingerprint"], fingerprint_id=first["fingerprint_id"],
            feature_dtype=first["feature_dtype"], root=root, split_method=split_method,
            random_weights=first["random_weights"], versions=first["versions"], lock_timeout=lock_timeout,
        )
        with writer:
            index = writer.index()
            with _open_main(target) as f:
                cnn_before = _read_meta(f)["cnn_rows_total"]
                old_skips = _read_skips(f)
            skip_state = {old_skips.path[i]: tuple(getattr(old_skips, k)[i] for k in Skips.FIELDS)
                          for i in range(len(old_skips))}
            dim = int(first["fingerprint"]["feature_dim"])
            for p in paths:
                with FeatureStore(p) as fs:
                    rows = fs._rows
                    take = []
                    for i, path in enumerate(rows.path.tolist()):
                        if only_paths is not None and path not in only_paths:
                            report.rows_outside += 1
                        elif index.same_row(rows, i):
                            report.rows_unchanged += 1
                        elif path in index.by_path and index.rows.mtime_ns[index.by_path[path]] > rows.mtime_ns[i]:
                            report.rows_stale += 1
                        else:
                            take.append(i)
                    take_index = np.array(take, np.int64)
                    for start in range(0, len(take_index), chunk_rows):
                        sel = take_index[start:start + chunk_rows]
                        writer.append(Rows(fs.features(sel), *(getattr(rows, fld)[sel] for fld in Rows.FIELDS)))
                    report.rows_added += len(take_index)
                    sk = fs._skips
                    keep = np.array([i for i in range(len(sk))
                                     if (only_paths is None or sk.path[i] in only_paths)
                                     and skip_state.get(sk.path[i]) != tuple(getattr(sk, k)[i] for k in Skips.FIELDS)
                                     ], np.int64)
                    if len(keep):
                        writer.append(Rows.empty(dim, first["feature_dtype"]), sk.take(keep))
                    report.skips_added += len(keep)
                    writer.record_merged(fs.store_id or f"{p.name}@{fs.created}", fs.cnn_rows_total)
            if prune_paths is not None:
                writer.consolidate(prune_paths=prune_paths)
        with _open_main(target) as f:
            meta = _read_meta(f)
            report.cnn_rows_added = meta["cnn_rows_total"] - cnn_before
            report.n_store_rows = int(f["features"].shape[0])
        if remove:
            # only now: the merged store is in place (a crash before this line just merges again)
            for p in paths:
                p.unlink(missing_ok=True)
                jdir = journal_dir(p)
                if jdir.is_dir():
                    for leftover in jdir.iterdir():
                        leftover.unlink(missing_ok=True)
                    jdir.rmdir()
            report.removed = True
    finally:
        for lock in locks:
            lock.release()
        if report.removed:
            for p in paths:
                lock_path(p).unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    return report
