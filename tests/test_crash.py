"""kill -9 at exact moments of a real extraction, and at a random moment from outside.

After every kill: the store opens, no image appears twice, and what it holds is exactly what was
committed; the lock of the dead writer is free; a rerun completes the store with every image exactly
once, recomputes only what was not committed (at most the one batch in flight), never recomputes a
committed row, and gives the features of a clean run.

The exact moments use the test-only hook FEATX_TEST_CRASH_AT=<point>:<n> (featx.store.crash_point),
which makes the extracting process SIGKILL itself the n-th time it reaches <point>. The killed runs are
real `featx extract` processes (real photos, the vendored MobileNet α=0.25), two at a time so that
their ~10 s TensorFlow imports overlap; the reruns run in this process with the session backbone (the
CLI's code path, without the import), except after the random kill, where the rerun is the real CLI.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest

from conftest import make_photo_set, run_cli
from featx.extract import extract
from storecheck import (assert_complete, assert_lock_free, assert_sane, cli_args, features_by_path, leftovers,
                        parts, relpaths, rerun, start_cli)

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"

BATCH = 4
CLASSES = ("cat", "coffee", "rocket")
TOTAL = 24  # 8 per class: 6 batches of 4


def _main_rows(store: Path) -> int:
    with h5py.File(store, "r", locking=False) as f:
        return f["features"].shape[0]


@dataclass
class Point:
    hook: str  # FEATX_TEST_CRASH_AT
    computed: int  # rows through the CNN when the kill came
    committed: int  # rows a reader must see after it
    left: tuple[int, int, int]  # what the kill leaves: rows in STORE.h5, journal parts, temporary files


POINTS = {
    # killed after building the model, before touching the store (which holds cat+coffee from an earlier run)
    "model-build": Point("model-built:1", 16, 16, (16, 0, 0)),
    # first batch computed, its journal part not yet written (the empty store was created)
    "mid-batch-before-first-part": Point("predicted:1", 4, 0, (0, 0, 0)),
    # third part written and fsync'd under its temporary name, not yet renamed
    "during-part-write": Point("part-written:3", 12, 8, (0, 2, 1)),
    # between journal parts: the fourth just committed
    "between-parts": Point("part-committed:4", 16, 16, (0, 4, 0)),
    # the new STORE.h5 written beside the old one, not yet renamed over it
    "consolidation-before-replace": Point("consolidate-written:1", 24, 24, (0, 6, 1)),
    # the new STORE.h5 in place, the merged parts not yet deleted (a reader sees both: no duplicates)
    "consolidation-after-replace": Point("consolidate-replaced:1", 24, 24, (24, 6, 0)),
    # all done, killed while reading the store back for the summary
    "final-read": Point("final-read:1", 24, 24, (24, 0, 0)),
}


def _random_kill(data: Path, store: Path, seed: int) -> tuple[int, str]:
    """Kill a real extraction from outside at a random moment: after a random number of committed
    batches plus a random jitter (so anywhere in a batch: decoding, in the model, writing a part)."""
    rng = random.Random(seed)
    n_batches = len(relpaths(data)) // BATCH
    target, jitter = rng.randint(1, n_batches - 3), rng.uniform(0, 0.05)
    proc = start_cli(data, store)
    deadline = time.time() + 240
    while len(parts(store)) < target:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"extraction ended before the kill: {proc.communicate()[1][-2000:]}")
        time.sleep(0.005)
    time.sleep(jitter)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode, f"seed {seed}: killed after {target} parts + {jitter * 1000:.0f} ms"


@pytest.fixture(scope="module")
def crashes(tmp_path_factory, backbone):
    """Run every crash: the deterministic points and the random kill, two processes at a time."""
    tmp = tmp_path_factory.mktemp("crash")
    data = make_photo_set(tmp / "photos", classes=CLASSES, n=TOTAL // len(CLASSES))
    clean = tmp / "clean.h5"
    extract(data, clean, backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    # the model-build kill hits a store that already holds two classes (from an earlier run on them)
    sub = make_photo_set(tmp / "sub", classes=CLASSES[:2], n=TOTAL // len(CLASSES))
    extract(sub, tmp / "model-build.h5", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    before = (tmp / "model-build.h5").read_bytes()

    big = make_photo_set(tmp / "big", classes=CLASSES, n=20)  # 60 images, 15 batches: room for a random kill
    seed = int(os.environ.get("FEATX_CRASH_SEED", time.time_ns() % 2**31))

    def crash(name: str):
        point = POINTS[name]
        return run_cli(*cli_args(data, tmp / f"{name}.h5", BATCH), env={"FEATX_TEST_CRASH_AT": point.hook})

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        random_job = pool.submit(_random_kill, big, tmp / "random.h5", seed)
        jobs = {name: pool.submit(crash, name) for name in POINTS}
        results = {name: job.result() for name, job in jobs.items()}
        random_result = random_job.result()
    print(f"{len(POINTS) + 1} killed extractions in {time.perf_counter() - started:.0f} s")
    assert (tmp / "model-build.h5").read_bytes() == before, "the kill during model build changed the store"
    return {"tmp": tmp, "data": data, "big": big, "clean": features_by_path(clean), "results": results,
            "random": random_result}


@pytest.mark.parametrize("name", list(POINTS))
def test_kill_9_at_a_point_then_rerun(crashes, backbone, name):
    point, store, data = POINTS[name], crashes["tmp"] / f"{name}.h5", crashes["data"]
    proc = crashes["results"][name]
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point.hook}: {proc.returncode}\n{proc.stderr[-3000:]}"
    allowed = relpaths(data)
    # after the kill: the store opens, no image twice, exactly what was committed
    paths = assert_sane(store, allowed)
    assert len(paths) == point.committed
    assert (_main_rows(store), len(parts(store)), len(leftovers(store))) == point.left
    assert point.computed - point.committed <= BATCH  # at most the batch in flight is lost
    assert_lock_free(store)  # the dead writer's OS lock went with it
    # the rerun computes only what was not committed, and completes the store
    summary = rerun(data, store, backbone, BATCH)
    assert summary.n_cached == point.committed
    assert summary.n_extracted == TOTAL - point.committed
    assert_complete(store, allowed, crashes["clean"])


def test_kill_9_at_a_random_moment_then_cli_rerun(crashes, backbone):
    rc, how = crashes["random"]
    store, data = crashes["tmp"] / "random.h5", crashes["big"]
    assert rc == -signal.SIGKILL, how
    allowed = relpaths(data)
    committed = len(assert_sane(store, allowed))
    assert 0 < committed < len(allowed), how
    out = run_cli(*cli_args(data, store, BATCH))  # the real command, as a user would rerun it
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["n_cached"] == committed and summary["n_extracted"] == len(allowed) - committed, how
    clean = crashes["tmp"] / "clean-big.h5"
    extract(data, clean, backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    assert_complete(store, allowed, features_by_path(clean))
