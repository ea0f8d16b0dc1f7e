"""Reading a store: :class:`FeatureStore` sees the consolidated ``STORE.h5`` plus the committed journal
parts, takes no lock (it may read while a writer writes), and verifies the recorded checksums."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from featx.store.checksums import (_CHECKSUM_ATTRS, _CHECKSUM_KINDS, _digest_attrs, _digest_column, _digest_total,
                                   _hash_features)
from featx.store.errors import StoreError
from featx.store.journal import _PartVanished, load_journal
from featx.store.layout import (Rows, Skips, StoreIndex, _last_per_key, _open_main, _read_main_rows_meta, _read_meta,
                                _read_skips, _read_str, _take_rows)


def _file_identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_column(f: h5py.File, name: str):
    ds = f[name]
    if _CHECKSUM_KINDS[name] == "str":
        return _read_str(ds).tolist()
    return ds[()]


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
    def checksum_recorded(self) -> bool:
        """False for a store from a featx without checksums (its next consolidation records them)."""
        return "checksum" in self._file

    @property
    def feature_dim(self) -> int:
        return int(self._meta["fingerprint"]["feature_dim"])

    @property
    def feature_sets(self) -> dict[str, slice]:
        """Feature set name → its columns: the fingerprint's ``feature_sets`` (several layers in one
        row), else the one implicit set ``final`` (featx.featuresets)."""
        from featx.featuresets import feature_sets

        return feature_sets(self._meta["fingerprint"])

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
        n_main = len(self._main_index)
        in_main = rows < n_main
        if in_main.all():  # the common case: no masked copy (7 of the 85 s of 200,000 rows' class statistics)
            return _take_rows(self._file["features"], self._main_index[rows]).astype(np.float32, copy=False)
        out = np.empty((len(rows), self.feature_dim), np.float32)
        if in_main.any():
            out[in_main] = _take_rows(self._file["features"], self._main_index[rows[in_main]])
        if (~in_main).any():
            out[~in_main] = self._journal.features[rows[~in_main] - n_main]
        return out

    def feature_columns(self, columns: slice) -> np.ndarray:
        """Columns `columns` of every row's features, in row order and the stored dtype: a contiguous
        read of the whole dataset, for passes that need all rows but only a slab of the columns."""
        main = self._file["features"][:, columns]
        if len(self._main_index) != len(main):  # rows replaced by journal parts
            main = main[self._main_index]
        if not len(self._journal.features):
            return main
        return np.concatenate([main, self._journal.features[:, columns].astype(main.dtype)])

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
            "feature_sets": {name: [cols.start, cols.stop] for name, cols in self.feature_sets.items()},
            "views": self.fingerprint.get("views", "one"),
            "feature_dtype": self.feature_dtype,
            "root": self.root,
            "split_method": self.split_method,
            "pending_journal_parts": self.pending_parts,
            "checksum_recorded": self.checksum_recorded,
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
