"""What can go wrong with a store, as exceptions (all :class:`StoreError`), how a full disk is told
apart and reported, and how two backbone fingerprints differ (for :class:`FingerprintMismatch` messages).

:class:`StoreError` and :class:`FingerprintMismatch` are defined in :mod:`featx.errors` (the
mismatch is shared with the classifier side) and re-exported here."""

from __future__ import annotations

import errno
from pathlib import Path

from featx.errors import FingerprintMismatch, InputNotFound, StoreError

__all__ = ["StoreError", "FingerprintMismatch", "StoreNotFound", "StoreLocked", "StoreFull",
           "describe_fingerprint_difference"]


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


def describe_fingerprint_difference(expected: dict, actual: dict) -> str:
    keys = sorted(set(expected) | set(actual))
    diffs = [f"{k}: {expected.get(k)!r} vs {actual.get(k)!r}" for k in keys if expected.get(k) != actual.get(k)]
    return "; ".join(diffs)
