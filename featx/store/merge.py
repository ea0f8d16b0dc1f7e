"""Merging stores: :func:`merge_stores` appends the rows of other stores (the shards of a distributed
extraction, :mod:`featx.distributed`) to one, through a :class:`~featx.store.writer.StoreWriter`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from featx.store.errors import FingerprintMismatch, StoreError, StoreLocked, describe_fingerprint_difference
from featx.store.journal import journal_dir
from featx.store.layout import Rows, Skips, StoreIndex, _open_main, _read_meta, _read_skips
from featx.store.reader import FeatureStore
from featx.store.writer import StoreWriter, lock_path


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
    started = time.perf_counter()
    target = Path(store)
    paths = _distinct_shards(target, shards)
    metas = _compatible_metas(target, paths)
    first = metas[0]
    report = MergeReport(str(target), [str(p) for p in paths])
    split_method = next((m["split_method"] for m in metas if m["split_method"]), {})
    root = next((m["root"] for m in metas if m["root"]), "") or None
    locks: list = []
    try:
        _lock_shards(paths, lock_timeout, locks)
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
            skip_state = {old_skips.path[i]: _skip_state(old_skips, i) for i in range(len(old_skips))}
            for p in paths:
                with FeatureStore(p) as fs:
                    _append_shard(writer, fs, index, skip_state, only_paths, chunk_rows, report)
                    writer.record_merged(fs.store_id or f"{p.name}@{fs.created}", fs.cnn_rows_total)
            if prune_paths is not None:
                writer.consolidate(prune_paths=prune_paths)
        with _open_main(target) as f:
            meta = _read_meta(f)
            report.cnn_rows_added = meta["cnn_rows_total"] - cnn_before
            report.n_store_rows = int(f["features"].shape[0])
        if remove:
            # only now: the merged store is in place (a crash before this line just merges again)
            _remove_shards(paths)
            report.removed = True
    finally:
        for lock in locks:
            lock.release()
        if report.removed:
            for p in paths:
                lock_path(p).unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    return report


def _distinct_shards(target: Path, shards: Sequence[str | os.PathLike]) -> list[Path]:
    """Each shard once (by resolved path); none of them the target itself."""
    paths = list({Path(s).resolve(): Path(s) for s in shards}.values())
    if not paths:
        raise StoreError(f"nothing to merge into {target}: no shard stores given")
    if target.exists() and any(p.resolve() == target.resolve() for p in paths):
        raise StoreError(f"cannot merge store {target} into itself")
    return paths


def _compatible_metas(target: Path, paths: list[Path]) -> list[dict]:
    """The shards' metadata, once they are known to agree with each other and with `target`."""
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
    return metas


def _lock_shards(paths: list[Path], lock_timeout: float | None, locks: list) -> None:
    """Take each shard's writer lock, adding it to `locks` (the caller releases them)."""
    from filelock import FileLock, Timeout

    for p in paths:
        lock = FileLock(str(lock_path(p)))
        try:
            lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout)
        except Timeout:
            raise StoreLocked(f"shard {p} is being written by another featx process (lock {lock_path(p)} is "
                              "held); merge it when its extraction has finished") from None
        locks.append(lock)


def _skip_state(skips: Skips, i: int) -> tuple:
    return tuple(getattr(skips, k)[i] for k in Skips.FIELDS)


def _append_shard(writer: StoreWriter, fs: FeatureStore, index: StoreIndex, skip_state: dict,
                  only_paths: set[str] | None, chunk_rows: int, report: MergeReport) -> None:
    """Append one shard's new rows (in blocks of `chunk_rows`) and new skips; count them in `report`.

    `index` and `skip_state` describe the store before the merge began.
    """
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
                     and skip_state.get(sk.path[i]) != _skip_state(sk, i)], np.int64)
    if len(keep):
        writer.append(Rows.empty(fs.feature_dim, fs.feature_dtype), sk.take(keep))
    report.skips_added += len(keep)


def _remove_shards(paths: list[Path]) -> None:
    """Delete the shard stores and their journals (their lock files go once the locks are released)."""
    for p in paths:
        p.unlink(missing_ok=True)
        jdir = journal_dir(p)
        if jdir.is_dir():
            for leftover in jdir.iterdir():
                leftover.unlink(missing_ok=True)
            jdir.rmdir()
