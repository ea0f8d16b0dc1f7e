"""The store on its own, on synthetic rows (random features, made-up content hashes): no CNN, no images,
seconds to run. What a writer appends, a reader sees once with its labels and splits; a later writer
replaces rows of the same path; the journal of a killed writer is readable and the next writer merges
it; float16 stores; a store of another backbone is refused; verify() finds a one-bit change; iter_chunks
stays within its chunk size; a folder is not a store. The same guarantees under a real extraction are
tested in test_crash.py and test_store_faults.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featx.backbones import fingerprint_id
from featx.errors import InputNotFound
from featx.store import (FeatureStore, FingerprintMismatch, Rows, Skips, StoreError, StoreLocked, StoreNotFound,
                         StoreWriter, journal_dir)

DIM = 16
FP = {"backbone": "synthetic", "feature_dim": DIM}


def writer(store: Path, fp: dict = FP, **kwargs) -> StoreWriter:
    return StoreWriter(store, fingerprint=fp, fingerprint_id=fingerprint_id(fp), **kwargs)


def make_rows(paths: list[str], labels: list[str], splits: list[str], seed: int) -> Rows:
    """Rows of random float32 features; sha256 and mtime depend on the seed (another read of the file)."""
    rng = np.random.default_rng(seed)
    n = len(paths)
    return Rows(
        features=rng.standard_normal((n, DIM)).astype(np.float32),
        sha256=np.array([hashlib.sha256(f"{p}#{seed}".encode()).hexdigest() for p in paths]),
        path=np.array(paths),
        label=np.array(labels),
        split=np.array(splits),
        nbytes=np.full(n, 1000 + seed, np.int64),
        mtime_ns=np.arange(n, dtype=np.int64) + 1_700_000_000_000_000_000 + seed,
    )


def image_rows(first: int, n: int, seed: int) -> Rows:
    """n rows named img_<i>.png for i in first…first+n-1, labelled cat / dog / unlabelled in turn."""
    labels = [("cat", "dog", "")[i % 3] for i in range(first, first + n)]
    splits = [("train", "train", "validation", "test", "")[i % 5] for i in range(first, first + n)]
    return make_rows([f"{lab or 'unlabelled'}/img_{i:03d}.png" for i, lab in zip(range(first, first + n), labels)],
                     labels, splits, seed)


def expected(*blocks: Rows) -> dict[str, dict]:
    """What a reader must see: per path, the newest row's values."""
    out = {}
    for rows in blocks:
        for i, p in enumerate(rows.path.tolist()):
            out[p] = {"features": rows.features[i], "sha256": str(rows.sha256[i]), "label": str(rows.label[i]),
                      "split": str(rows.split[i])}
    return out


def read_back(store: Path) -> dict[str, dict]:
    """Every row of the store by path (asserting that no path appears twice), labels as names."""
    with FeatureStore(store) as fs:
        paths = fs.paths.tolist()
        assert len(paths) == len(set(paths)), "a path appears twice"
        names = fs.label_names
        X, y = fs.X, fs.y
        return {p: {"features": X[i], "sha256": str(fs.sha256[i]), "label": names[y[i]] if y[i] >= 0 else "",
                    "split": str(fs.splits[i])} for i, p in enumerate(paths)}


def assert_rows(store: Path, want: dict[str, dict]) -> None:
    got = read_back(store)
    assert sorted(got) == sorted(want)
    for p, row in want.items():
        np.testing.assert_array_equal(got[p]["features"], row["features"], err_msg=p)
        assert {k: got[p][k] for k in ("sha256", "label", "split")} == \
            {k: row[k] for k in ("sha256", "label", "split")}, p


def main_rows(store: Path) -> int:
    with h5py.File(store, "r", locking=False) as f:
        return f["features"].shape[0]


def parts(store: Path) -> list[Path]:
    return sorted(journal_dir(store).glob("part-*.npz")) if journal_dir(store).is_dir() else []


def temporaries(store: Path) -> list[Path]:
    return list(store.parent.glob(f".{store.name}.tmp-*"))


def test_appended_rows_are_read_back_once_with_their_labels_splits_and_skips(tmp_path):
    store = tmp_path / "s.h5"
    blocks = [image_rows(0, 12, seed=1), image_rows(12, 12, seed=2), image_rows(24, 6, seed=3)]
    skips = Skips.from_records([
        {"path": "cat/broken.jpg", "kind": "decode", "reason": "truncated JPEG", "sha256": "ab" * 32,
         "nbytes": 17, "mtime_ns": 5},
        {"path": "dog/empty.png", "kind": "empty", "reason": "0 bytes", "sha256": "", "nbytes": 0, "mtime_ns": 6},
    ])
    with writer(store) as w:
        for i, rows in enumerate(blocks):
            w.append(rows, skips if i == 1 else None, n_computed=len(rows) - i)  # i rows reused each time
        # committed but not consolidated: in the journal only, and readers already see them
        assert len(parts(store)) == 3 and main_rows(store) == 0
        assert_rows(store, expected(*blocks))
        with pytest.raises(StoreLocked, match="being written by another featx process"):
            writer(store).open()  # one writer at a time
    assert not journal_dir(store).exists() and not temporaries(store)
    assert main_rows(store) == 30  # consolidated
    assert_rows(store, expected(*blocks))
    with FeatureStore(store) as fs:
        assert fs.label_names == ["cat", "dog"]
        assert fs.pending_parts == 0
        assert fs.cnn_rows_total == 30 - (0 + 1 + 2)
        assert fs.skipped == skips.records()
        info = fs.info()
        assert fs.verify()["ok"]
    assert info["n_images"] == 30 and info["labels"] == {"cat": 10, "dog": 10}
    assert info["splits"] == {"train": 12, "validation": 6, "test": 6, "": 6}
    assert info["skipped_by_kind"] == {"decode": 1, "empty": 1}


def test_reopening_appends_and_replaces_the_row_of_the_same_path(tmp_path):
    store = tmp_path / "s.h5"
    first = image_rows(0, 10, seed=1)
    with writer(store) as w:
        w.append(first, Skips.from_records([{"path": "cat/fixed.png", "kind": "decode", "reason": "bad"}]))
    with FeatureStore(store) as fs:
        created, store_id = fs.created, fs.store_id
        assert [s["path"] for s in fs.skipped] == ["cat/fixed.png"]
    # the next run: three new images, img_004 read again (new content, relabelled cat, moved to test), and
    # the file that could not be used is now fine
    changed = make_rows(["dog/img_004.png", "cat/fixed.png"], ["cat", "cat"], ["test", "train"], seed=9)
    more = image_rows(10, 3, seed=2)
    again = make_rows(["unlabelled/img_011.png"], ["dog"], ["validation"], seed=10)  # twice in one run
    want = expected(first, more, changed, again)
    assert len(want) == 14
    with writer(store) as w:
        w.append(more)
        w.append(changed)
        w.append(again)
        assert_rows(store, want)  # a reader of the journal: each path once, its newest row
    assert_rows(store, want)  # consolidated the same way
    got = read_back(store)["dog/img_004.png"]
    assert (got["label"], got["split"]) == ("cat", "test")
    assert not np.array_equal(got["features"], first.features[first.path.tolist().index("dog/img_004.png")])
    with FeatureStore(store) as fs:
        assert fs.skipped == []  # the row of that path replaces the record of its failure
        assert (fs.created, fs.store_id) == (created, store_id)  # the same store, grown
        assert fs.verify()["ok"]


KILLED_WRITER = """
import json, sys
import numpy as np
from featx.backbones import fingerprint_id
from featx.store import Rows, StoreWriter

fp = json.loads(sys.argv[3])
blocks = np.load(sys.argv[2])
with StoreWriter(sys.argv[1], fingerprint=fp, fingerprint_id=fingerprint_id(fp)) as writer:
    for i in range(3):
        writer.append(Rows(*(blocks[f"b{i}_{field}"] for field in ("features",) + Rows.FIELDS)), n_computed=4)
"""


@pytest.mark.parametrize("point, committed, left", [
    # killed between journal parts: two of three committed, the writer never closed
    ("part-committed:2", 2, (0, 2, 0)),
    # killed while closing: the new STORE.h5 written beside the old one, not yet renamed over it
    ("consolidate-written:1", 3, (0, 3, 1)),
    # killed while closing: the new STORE.h5 in place, its merged parts not yet deleted (rows in both)
    ("consolidate-replaced:1", 3, (12, 3, 0)),
], ids=["between-parts", "consolidation-before-replace", "consolidation-after-replace"])
def test_journal_of_a_killed_writer_is_read_and_the_next_writer_merges_it(tmp_path, point, committed, left):
    store = tmp_path / "s.h5"
    blocks = [image_rows(4 * i, 4, seed=i) for i in range(3)]
    np.savez(tmp_path / "blocks.npz", **{f"b{i}_{field}": getattr(rows, field)
                                         for i, rows in enumerate(blocks) for field in ("features",) + Rows.FIELDS})
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(store), str(tmp_path / "blocks.npz"),
                           json.dumps(FP)], env={**os.environ, "FEATX_TEST_CRASH_AT": point},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (main_rows(store), len(parts(store)), len(temporaries(store))) == left
    want = expected(*blocks[:committed])
    assert_rows(store, want)  # a reader sees exactly the committed parts
    with FeatureStore(store) as fs:
        assert fs.pending_parts == committed and fs.cnn_rows_total == 4 * committed
    with writer(store):  # the dead writer's lock is free; opening merges its journal, removes its temporaries
        assert not parts(store) and not temporaries(store)
        assert main_rows(store) == 4 * committed
    assert not journal_dir(store).exists()
    assert_rows(store, want)
    with FeatureStore(store) as fs:
        assert fs.pending_parts == 0
        assert fs.cnn_rows_total == 4 * committed  # merged parts are not counted twice
        assert fs.verify()["ok"]


def test_float16_store_keeps_float16_and_refuses_float32_appends(tmp_path):
    store = tmp_path / "half.h5"
    rows = image_rows(0, 9, seed=4)
    rows.features *= 1000  # values of many magnitudes, most of them not representable in float16
    half = rows.features.astype(np.float16).astype(np.float32)
    with writer(store, feature_dtype="float16") as w:
        w.append(rows)
        with FeatureStore(store) as fs:
            np.testing.assert_array_equal(fs.X, half)  # the journal holds float16 too: same values before
    with h5py.File(store, "r", locking=False) as f:
        assert f["features"].dtype == np.float16 and f.attrs["feature_dtype"] == "float16"
    with FeatureStore(store) as fs:
        assert fs.feature_dtype == "float16"
        X = fs.X
        assert X.dtype == np.float32
        np.testing.assert_array_equal(X, half)  # … and after consolidation
        assert not np.array_equal(X, rows.features)
        assert fs.verify()["ok"]
    with pytest.raises(StoreError, match="holds float16 features; asked for float32"):
        writer(store).open()
    with pytest.raises(ValueError, match="feature dtype must be one of"):
        writer(tmp_path / "other.h5", feature_dtype="float64")


def test_store_of_another_backbone_configuration_is_refused(tmp_path):
    store = tmp_path / "s.h5"
    rows = image_rows(0, 5, seed=1)
    with writer(store) as w:
        w.append(rows)
    other = {**FP, "backbone": "other"}
    with pytest.raises(FingerprintMismatch, match="backbone: 'synthetic' vs 'other'"):
        writer(store, other).check_compatible()  # before any work, without the lock
    with pytest.raises(FingerprintMismatch, match="different backbone configuration"):
        writer(store, other).open()
    assert not parts(store)  # nothing was written
    assert_rows(store, expected(rows))
    with FeatureStore(store) as fs:
        assert fs.verify()["ok"]


def test_verify_finds_one_flipped_bit_of_one_feature_value(tmp_path):
    store = tmp_path / "s.h5"
    rows = image_rows(0, 40, seed=5)
    with writer(store) as w:
        w.append(rows)
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["ok"] and report["status"] == "ok" and report["feature_chunks"] == 1
    with h5py.File(store, "r+", locking=False) as f:
        value = f["features"][17, 3:4]
        f["features"][17, 3:4] = (value.view(np.uint32) ^ 1).view(np.float32)  # the last bit of the mantissa
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["status"] == "mismatch" and not report["ok"]
    assert report["bad_chunks"] == [{"chunk": 0, "rows": [0, 39]}]
    assert report["bad_columns"] == [] and report["attrs_ok"] is True
    assert "features of rows 0–39" in report["message"]


def test_iter_chunks_yields_at_most_chunk_size_rows_covering_the_split_once(tmp_path):
    store = tmp_path / "s.h5"
    with writer(store) as w:
        w.append(image_rows(0, 30, seed=6))
    with writer(store) as w:  # leave rows in the journal too: chunks span both
        w.append(image_rows(30, 17, seed=7))
        with FeatureStore(store) as fs:
            assert fs.pending_parts == 1
            for split in ("train", None):
                index = fs.split_index(split) if split else np.arange(len(fs))
                chunks = list(fs.iter_chunks(5, split=split))
                assert [len(r) for _, _, r in chunks] == [min(5, len(index) - s) for s in range(0, len(index), 5)]
                np.testing.assert_array_equal(np.concatenate([r for _, _, r in chunks]), index)
                for X, y, r in chunks:
                    assert X.shape == (len(r), DIM) and X.dtype == np.float32
                    np.testing.assert_array_equal(X, fs.features(r))
                    np.testing.assert_array_equal(y, fs.y[r])
            assert len(fs.split_index("train")) == 20 and fs.split_index("train").max() >= 30  # journal rows too


def test_a_folder_or_a_missing_path_given_as_a_store_is_store_not_found(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    with pytest.raises(StoreNotFound, match="is a folder, not a featx store") as exc:
        FeatureStore(folder)
    assert isinstance(exc.value, InputNotFound) and isinstance(exc.value, StoreError)
    with pytest.raises(StoreNotFound, match="is a folder"):
        writer(folder).open()
    with pytest.raises(StoreNotFound, match="does not exist"):
        FeatureStore(tmp_path / "missing.h5")


def test_merge_appends_shards_once_replaces_older_rows_and_refuses_another_fingerprint(tmp_path):
    from featx.store.merge import merge_stores

    store, a, b = tmp_path / "s.h5", tmp_path / "a.h5", tmp_path / "b.h5"
    old = image_rows(0, 6, seed=1)
    with writer(store) as w:
        w.append(old)
    shard_a, shard_b = image_rows(0, 10, seed=2), image_rows(10, 8, seed=3)  # a: rows 0-5 re-read (newer mtime)
    skip = Skips.from_records([{"path": "cat/bad.jpg", "kind": "decode", "reason": "truncated JPEG",
                                "sha256": "cd" * 32, "nbytes": 9, "mtime_ns": 7}])
    with writer(a) as w:
        w.append(shard_a, skip)
    with writer(b) as w:
        w.append(shard_b)

    report = merge_stores(store, [a, b])
    assert (report.rows_added, report.rows_unchanged, report.skips_added, report.n_store_rows) == (18, 0, 1, 18)
    assert_rows(store, expected(old, shard_a, shard_b))
    assert merge_stores(store, [a, b]).rows_added == 0  # merging twice changes nothing
    assert_rows(store, expected(shard_a, shard_b))

    other = tmp_path / "other.h5"
    fp = {"backbone": "synthetic", "feature_dim": DIM, "image_size": [64, 64]}
    with writer(other, fp) as w:
        w.append(image_rows(30, 3, seed=4))
    with pytest.raises(FingerprintMismatch):
        merge_stores(store, [a, other])
    assert_rows(store, expected(shard_a, shard_b))  # nothing merged from either shard

    merge_stores(store, [a, b], remove=True)
    assert not a.exists() and not b.exists()
    with FeatureStore(store) as fs:
        assert fs.verify()["ok"] and fs.skipped[0]["path"] == "cat/bad.jpg"
