"""The one writer of a store: :class:`StoreWriter` takes the lock (``STORE.h5.lock``), appends blocks
durably to the journal and consolidates the journal into a new ``STORE.h5`` renamed over the old one.

Also here: :func:`crash_point`, the test-only kill -9 hook placed at the writer's commit points (and
used by :mod:`featx.extract` for its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from featx.fileio import replace_atomically
from featx.store.errors import (FingerprintMismatch, StoreError, StoreLocked, _disk_full_error, _is_disk_full,
                                describe_fingerprint_difference)
from featx.store.journal import _list_parts, journal_dir, load_journal
from featx.store.layout import (FEATURE_DTYPES, Rows, Skips, StoreIndex, _last_per_key, _open_main,
                                _read_main_rows_meta, _read_meta, _read_skips, _take_rows, _write_store_file)

log = logging.getLogger("featx")

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


def lock_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.lock")


def acquire_lock(path: Path, timeout: float | None = 0):
    """The writer lock of the store `path`, held (a filelock.FileLock: release() it); StoreLocked if
    another process holds it past `timeout` (0: refuse at once; None: wait)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path)))
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except Timeout:
        raise StoreLocked(
            f"store {path} is being written by another featx process (lock {lock_path(path)} "
            "is held); wait for it to finish — readers may open the store meanwhile"
        ) from None
    return lock

class StoreWriter:
    """Appends rows to a store under an exclusive lock; see :mod:`featx.store` for the guarantees."""

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = acquire_lock(self.path, self._lock_timeout)
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
        replace_atomically(tmp, self.path)

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
        replace_atomically(tmp, jdir / name)  # fsyncs jdir: the rename survives a power cut, not only a kill
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
        replace_atomically(tmp, self.path)
        crash_point("consolidate-replaced")
        for part in parts:  # only after the new file is in place: a crash here just replays them
            part.unlink(missing_ok=True)
        return len(parts)
