"""The journal ``STORE.h5.journal/part-*.npz``: where it is, and reading back its committed parts.

A part holds one block of rows and skipped files; :meth:`featx.store.writer.StoreWriter.append` commits
it (temporary name, fsync, atomic rename) and ``StoreWriter.consolidate`` merges the parts into
``STORE.h5``. Readers (:class:`featx.store.reader.FeatureStore`) add the committed parts to the
consolidated rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featx.store.errors import FingerprintMismatch, StoreError
from featx.store.layout import Rows, Skips


def journal_dir(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.journal")


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
