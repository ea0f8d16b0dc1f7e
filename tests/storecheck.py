"""Checks shared by the crash, concurrency and disk-full tests: is the store sane, and does a rerun
complete it with every image exactly once, recomputing only what was not committed?"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import TEST_SIZE
from featx.extract import extract
from featx.store import FeatureStore, journal_dir, lock_path


def relpaths(data: Path) -> set[str]:
    return {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}


def cli_args(data: Path, store: Path, batch_size: int = 4) -> list[str]:
    return ["extract", str(data), "--store", str(store), "--backbone", "mobilenet_0.25", "--image-size",
            str(TEST_SIZE), "--batch-size", str(batch_size), "--workers", "1", "--no-progress", "--json"]


def start_cli(data: Path, store: Path, batch_size: int = 4, env: dict | None = None) -> subprocess.Popen:
    """A real `featx extract` in the background."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "featx.cli", *cli_args(data, store, batch_size)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parts(store: Path) -> list[Path]:
    return sorted(journal_dir(store).glob("part-*.npz")) if journal_dir(store).is_dir() else []


def leftovers(store: Path) -> list[Path]:
    """Temporary files of a writer: half-written journal parts and consolidation copies."""
    tmp_parts = list(journal_dir(store).glob(".tmp-*")) if journal_dir(store).is_dir() else []
    return tmp_parts + list(store.parent.glob(f".{store.name}.tmp-*"))


def assert_sane(store: Path, allowed: set[str]) -> list[str]:
    """The store opens, no image appears twice, and every row is an image of the set."""
    with FeatureStore(store) as fs:
        paths = fs.paths.tolist()
        X = fs.X
    assert len(paths) == len(set(paths)), f"an image appears twice in {store}"
    assert set(paths) <= allowed
    assert np.isfinite(X).all() and X.shape == (len(paths), 256)
    return paths


def assert_lock_free(store: Path) -> None:
    """The OS lock of a dead holder is gone: it can be taken at once."""
    from filelock import FileLock

    lock = FileLock(str(lock_path(store)))
    lock.acquire(timeout=0)
    lock.release()


def features_by_path(store: Path) -> dict[str, np.ndarray]:
    with FeatureStore(store) as fs:
        return dict(zip(fs.paths.tolist(), fs.X))


def assert_complete(store: Path, allowed: set[str], clean: dict[str, np.ndarray]) -> None:
    """Every image exactly once, journal merged, no temporary files, no image computed twice, features as a
    clean run's, and the checksums verify."""
    with FeatureStore(store) as fs:
        paths = fs.paths.tolist()
        assert sorted(paths) == sorted(allowed), "an image is missing or appears twice"
        assert fs.pending_parts == 0
        # rows computed by the CNN and committed, over every run: a committed row is never recomputed
        assert fs.cnn_rows_total == len(allowed)
        got = dict(zip(paths, fs.X))
        report = fs.verify()
    assert report["ok"], report["message"]
    assert not parts(store) and not leftovers(store)
    for p in allowed:
        np.testing.assert_allclose(got[p], clean[p], rtol=1e-3, atol=1e-4, err_msg=p)


def rerun(data: Path, store: Path, backbone, batch_size: int = 4):
    """The same extraction again, in this process (the CLI's code path without its ~10 s import)."""
    return extract(data, store, backbone=backbone, batch_size=batch_size, workers=1, progress=False)
