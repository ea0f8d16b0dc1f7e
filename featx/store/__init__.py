"""The HDF5 feature store: layout, crash-safe appends, the writer lock, checksums and the reader.

Everything other code needs is imported from here (``from featx.store import FeatureStore``); the
submodules hold one concern each, each importing only those listed before it::

    errors.py     StoreError and its kinds (FingerprintMismatch, StoreNotFound, StoreLocked, StoreFull)
    checksums.py  sha256 of feature blocks, columns and attributes (recorded, then verified)
    layout.py     the STORE.h5 file: format constants, Rows/Skips/StoreIndex, open + checks, read, write
    journal.py    the journal STORE.h5.journal/part-*.npz: where it is, reading its committed parts
    writer.py     StoreWriter: the lock, durable appends, consolidation; the test-only crash_point
    reader.py     FeatureStore: consolidated rows + committed parts, no lock; verify()
    merge.py      merge_stores: other stores (shards) appended through a StoreWriter

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

from featx.store.checksums import CHECKSUM_ROWS
from featx.store.errors import (FingerprintMismatch, StoreError, StoreFull, StoreLocked, StoreNotFound,
                                describe_fingerprint_difference)
from featx.store.journal import journal_dir, load_journal
from featx.store.layout import FEATURE_DTYPES, FORMAT, FORMAT_VERSION, Rows, Skips, StoreIndex
from featx.store.merge import MergeReport, merge_stores
from featx.store.reader import FeatureStore
from featx.store.writer import StoreWriter, crash_point, lock_path

__all__ = [
    "CHECKSUM_ROWS", "FEATURE_DTYPES", "FORMAT", "FORMAT_VERSION",
    "StoreError", "FingerprintMismatch", "StoreNotFound", "StoreLocked", "StoreFull", "describe_fingerprint_difference",
    "Rows", "Skips", "StoreIndex", "journal_dir", "load_journal",
    "StoreWriter", "crash_point", "lock_path", "FeatureStore", "MergeReport", "merge_stores",
]
