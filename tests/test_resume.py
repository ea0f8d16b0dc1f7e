"""kill -9 in the middle of a real extraction, then rerun: each image exactly once, at most a batch lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import TEST_SIZE, make_flower_set
from featx.store import FeatureStore, journal_dir


def _start(data, store):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, "-m", "featx", "extract", str(data), "--store", str(store), "--backbone",
         "mobilenet_0.25", "--image-size", str(TEST_SIZE), "--batch-size", "4", "--workers", "1",
         "--no-progress", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _parts(store) -> set:
    return set(journal_dir(store).glob("part-*.npz")) if journal_dir(store).is_dir() else set()


def _wait_for_parts(store, n_parts, proc, before, timeout=120):
    """Wait until the running extraction has committed `n_parts` new batches."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(_parts(store) - before) >= n_parts:
            return
        if proc.poll() is not None:
            raise AssertionError(f"extraction ended before the kill: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("extraction made no progress")


def test_kill_9_then_rerun_gives_each_image_exactly_once(tmp_path):
    data = make_flower_set(tmp_path / "flowers", classes=("daisy", "rose", "tulip"), n=40)
    total = 120
    store = tmp_path / "s.h5"
    rows_after_kills = []
    for kill_after_parts in (1, 6):  # early (first batches) and later (after a consolidation-free stretch)
        before = _parts(store)  # parts a previous kill left (merged by the new run at start)
        proc = _start(data, store)
        _wait_for_parts(store, kill_after_parts, proc, before)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with FeatureStore(store) as fs:  # the store always opens after a kill
            paths = fs.paths.tolist()
            assert len(paths) == len(set(paths)), "an image appears twice"
            assert 0 < len(paths) < total
            rows_after_kills.append(len(paths))
    assert rows_after_kills[1] > rows_after_kills[0]
    proc = _start(data, store)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    # only what was not committed is recomputed: nothing committed before the kill is lost
    assert summary["n_extracted"] == total - rows_after_kills[-1]
    assert summary["n_cached"] == rows_after_kills[-1]
    with FeatureStore(store) as fs:
        paths = fs.paths.tolist()
        assert len(paths) == total and len(set(paths)) == total
        assert fs.pending_parts == 0
    assert not list(journal_dir(store).glob("part-*"))
