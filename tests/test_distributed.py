"""Scale-out: extraction on a real Dask LocalCluster (two worker processes on loopback), shard-by-index and
`featx merge`, a worker killed mid-shard, the SGD search on the cluster, and training under a memory limit.

Every extraction reads real flower photos (plus one broken file) with the vendored MobileNet α=0.25 at the
test size; each distributed result is compared with a single-machine `extract()` of the same folder: same
paths, labels, splits and skipped files, features equal to float tolerance, and the CNN counted once per
image. One cluster serves the module (its workers import TensorFlow once, ~20 s); the tests that need no
cluster run first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_SIZE, photo_files, make_photo_set
from featx import cli
from featx.backbones import fingerprint_id
from featx.distributed import (extract_distributed, extract_shard, list_shards, merge, shard_dir, shard_of,
                               shard_path, start_local_cluster, train_store_sgd)
from featx.extract import extract
from featx.store import FeatureStore, FingerprintMismatch, Rows, StoreError, StoreLocked, StoreWriter, lock_path

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"

BATCH = 2  # small batches: many journal parts per shard, so a kill lands mid-shard
CLASSES = ("cat", "coffee", "rocket", "flower")
PER_CLASS = 20  # 80 photos + 1 broken file
COMMON = dict(backbone="mobilenet_0.25", image_size=TEST_SIZE, batch_size=BATCH, workers=1, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = make_photo_set(tmp_path_factory.mktemp("dist") / "photos", classes=CLASSES, n=PER_CLASS)
    (root / "coffee" / "not_a_photo.jpg").write_text("<html>not an image</html>")
    return root


@pytest.fixture(scope="module")
def reference(data, backbone, tmp_path_factory) -> dict:
    """The single-machine extraction every distributed result must equal."""
    store = tmp_path_factory.mktemp("ref") / "single.h5"
    summary = extract(data, store, backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    assert summary.n_extracted == len(CLASSES) * PER_CLASS and summary.n_skipped == 1
    return _contents(store)


def _contents(store: Path) -> dict:
    with FeatureStore(store) as fs:
        names = fs.label_names
        rows = {p: (names[y], s, x) for p, y, s, x in zip(fs.paths.tolist(), fs.y.tolist(), fs.splits.tolist(), fs.X)}
        assert len(rows) == len(fs), "an image appears twice"
        return {"rows": rows, "skipped": sorted((s["path"], s["kind"]) for s in fs.skipped),
                "cnn_rows_total": fs.cnn_rows_total, "pending": fs.pending_parts, "verify": fs.verify()}


def assert_same_as_reference(store: Path, reference: dict) -> None:
    got = _contents(store)
    assert sorted(got["rows"]) == sorted(reference["rows"]), "rows differ from the single-machine store"
    for path, (label, split, x) in reference["rows"].items():
        g_label, g_split, g_x = got["rows"][path]
        assert (g_label, g_split) == (label, split), path
        np.testing.assert_allclose(g_x, x, rtol=1e-4, atol=1e-5, err_msg=path)
    assert got["skipped"] == reference["skipped"]
    # the CNN computed each image once, summed over shards, workers and retries
    assert got["cnn_rows_total"] == len(reference["rows"])
    assert got["pending"] == 0 and got["verify"]["ok"], got["verify"]["message"]
    assert not shard_dir(store).exists(), "the shard stores were not removed after the merge"


# -- without a cluster ----------------------------------------------------------------------------------------
def test_featx_runs_without_dask_and_cluster_names_the_extra(data, tmp_path):
    """featx imports and works without Dask; --cluster then fails with the install command (exit 1)."""
    code = (
        "import sys\n"
        "sys.modules['dask'] = sys.modules['distributed'] = None  # as if not installed\n"
        "import featx, featx.distributed, featx.cli\n"
        f"rc = featx.cli.main(['extract', {str(data)!r}, '--store', {str(tmp_path / 's.h5')!r}, "
        "'--backbone', 'mobilenet_0.25', '--cluster', 'local:2'])\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 1, out.stderr
    assert "pip install 'featx[dask]'" in out.stderr
    assert not (tmp_path / "s.h5").exists()
    # and importing featx (the distributor included) does not import Dask or Keras
    probe = ("import sys, featx.distributed, featx.cli; "
             "print(sorted(m for m in ('dask', 'distributed', 'keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_shards_partition_by_path_hash(data):
    from featx.sources import load_source

    relpaths = [it.relpath for it in load_source(data).items]
    assert shard_of("daisy/100080576_f52e8ee070_n.jpg", 16) == 3  # a pure function of the path string, everywhere
    for n in (1, 3, 7):
        shards = [shard_of(p, n) for p in relpaths]
        assert set(shards) <= set(range(n)) and shards == [shard_of(p, n) for p in relpaths]
        assert min(np.bincount(shards, minlength=n)) > 0.4 * len(relpaths) / n  # roughly balanced
    assert shard_path("x/s.h5", 3, 16).as_posix() == "x/s.h5.shards/shard-00003-of-00016.h5"


def test_shard_by_index_then_merge_equals_one_machine(data, reference, backbone, tmp_path, capsys):
    """--shard i/N (no Dask) for each i, `featx merge`: the single-machine store; merging again adds nothing;
    shards of another fingerprint or dtype, or one still being written, are refused."""
    store = tmp_path / "sharded.h5"
    # shard 0 through the real command line (in this process: TensorFlow is already loaded)
    argv = ["extract", str(data), "--store", str(store), "--backbone", "mobilenet_0.25", "--image-size",
            str(TEST_SIZE), "--batch-size", str(BATCH), "--workers", "1", "--no-progress", "--json", "--shard", "0/3"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["store"] == str(shard_path(store, 0, 3))
    n_total = 0
    for i in (1, 2):
        s = extract_shard(data, store, f"{i}/3", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
        n_total += s.n_images
    n_total += first["n_images"]
    assert n_total == len(CLASSES) * PER_CLASS + 1  # every image in exactly one shard
    assert not store.exists() and len(list_shards(store)) == 3

    assert cli.main(["merge", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_added"] == len(CLASSES) * PER_CLASS and report["cnn_rows_added"] == report["rows_added"]
    assert cli.main(["info", str(store), "--verify", "--json"]) == 0  # an ordinary store to every reader
    capsys.readouterr()
    # idempotent: a second merge adds no row, no skip and no CNN count
    again = merge(store)
    assert (again.rows_added, again.skips_added, again.cnn_rows_added) == (0, 0, 0)
    assert again.rows_unchanged == len(CLASSES) * PER_CLASS
    # a rerun of a shard after the merge finds everything in STORE: nothing recomputed
    rerun = extract_shard(data, store, "1/3", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    assert rerun.n_extracted == 0 and rerun.n_cached + rerun.n_skipped == rerun.n_images

    with FeatureStore(store) as fs:
        fp, labels = fs.fingerprint, fs.label_names
    other_fp = {**fp, "pooling": "max"}
    odd = _tiny_store(tmp_path / "other.h5", other_fp, "float32", labels)
    with pytest.raises(FingerprintMismatch, match="different backbone configuration"):
        merge(store, [odd])
    half = _tiny_store(tmp_path / "half.h5", fp, "float16", labels)
    with pytest.raises(StoreError, match="float16"):
        merge(store, [half])
    from filelock import FileLock

    busy = shard_path(store, 0, 3)
    with FileLock(str(lock_path(busy))):
        with pytest.raises(StoreLocked, match="being written"):
            merge(store, [busy])

    merge(store, remove=True)
    assert_same_as_reference(store, reference)


def _tiny_store(path: Path, fp: dict, dtype: str, labels: list[str]) -> Path:
    with StoreWriter(path, fingerprint=fp, fingerprint_id=fingerprint_id(fp), feature_dtype=dtype) as w:
        w.append(Rows(np.ones((1, fp["feature_dim"]), dtype), np.array(["0" * 64]), np.array(["cat/x.jpg"]),
                      np.array([labels[0]]), np.array(["train"]), np.array([1], np.int64), np.array([1], np.int64)))
    return path


# -- training from a store larger than the memory limit -------------------------------------------------------
MEMORY_SCRIPT = r"""
import json, resource, sys, time
from featx.store import FeatureStore
from featx.linear import train_sgd

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

store, headroom = sys.argv[1], int(sys.argv[2])
out = {"baseline": vm("VmSize")}
out["limit"] = out["baseline"] + headroom
resource.setrlimit(resource.RLIMIT_AS, (out["limit"], out["limit"]))
with FeatureStore(store) as fs:
    out["features_bytes"] = len(fs) * fs.feature_dim * 4
    try:
        X = fs.X
        out["load_all"] = "loaded %s" % (X.shape,)
    except MemoryError:
        out["load_all"] = "MemoryError"
    started = time.perf_counter()
    model = train_sgd(fs, loss="hinge", chunk_size=256, epochs=2)
    out["train_seconds"] = time.perf_counter() - started
    correct = n = 0
    for Xc, yc, _ in fs.iter_chunks(1024, split="validation"):
        correct += int((model.predict(Xc) == yc).sum())
        n += len(yc)
out["accuracy"] = correct / n
out["vm_peak"] = vm("VmPeak")
out["tensorflow"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""


def test_train_sgd_from_a_store_larger_than_the_memory_limit(tmp_path):
    """In a subprocess whose address space is capped at its start-up size + 128 MB (RLIMIT_AS), the
    229 MB of features cannot be loaded (MemoryError: the limit is real), yet train_sgd trains on them chunk
    by chunk and classifies held-out digits well."""
    from sklearn.datasets import load_digits

    n_rows, dim, block, headroom = 28_000, 2048, 7_000, 128 << 20
    digits = load_digits()
    keep = digits.target < 5  # five classes keep the one-vs-rest SGD quick
    images, targets = digits.data[keep].astype(np.float32), digits.target[keep]
    n_train = int(len(images) * 0.8)
    rng = np.random.default_rng(0)
    projection = (rng.standard_normal((64, dim)) / 8).astype(np.float32)
    fp = {"backbone": "digits-projection", "feature_dim": dim, "image_size": [8, 8], "pooling": "none"}
    store = tmp_path / "big.h5"
    with StoreWriter(store, fingerprint=fp, fingerprint_id=fingerprint_id(fp)) as writer:
        for start in range(0, n_rows, block):
            idx = np.arange(start, start + block)
            src = idx % len(images)  # real digits seen through a random projection, plus noise
            X = images[src] @ projection + 4 * rng.standard_normal((block, dim), np.float32)
            labels = targets[src].astype(str)
            writer.append(Rows(
                X, np.array([f"{i:064x}" for i in idx]), np.array([f"{l}/{i:06d}.png" for l, i in zip(labels, idx)]),
                labels, np.where(src < n_train, "train", "validation"),  # validation digits never seen in training
                np.full(block, 1000, np.int64), np.zeros(block, np.int64)))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(store), str(headroom)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    print(result)
    # the features are half as large again as all the process may allocate beyond its start-up size
    assert result["features_bytes"] == n_rows * dim * 4 > 1.5 * (result["limit"] - result["baseline"])
    assert result["load_all"] == "MemoryError"
    assert result["accuracy"] > 0.85, result
    assert result["vm_peak"] <= result["limit"] and not result["tensorflow"]


# -- on a LocalCluster --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """featx's own `local:2` cluster (two worker processes, one thread each, loopback only)."""
    import distributed

    with start_local_cluster(2) as cluster, distributed.Client(cluster) as c:
        yield c


def test_cluster_cli_resumes_shards_and_equals_one_machine(data, reference, backbone, client, tmp_path, capsys):
    """`featx extract --cluster tcp://…` after a shard that an earlier (killed) run finished: the run picks up
    the same partition, shard 0 comes from its own store, and the merged store equals one machine's. A rerun
    computes nothing, and new images are all that a later run computes."""
    store = tmp_path / "cluster.h5"
    done = extract_shard(data, store, "0/2", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    argv = ["extract", str(data), "--store", str(store), "--backbone", "mobilenet_0.25", "--image-size",
            str(TEST_SIZE), "--batch-size", str(BATCH), "--workers", "1", "--no-progress", "--json",
            "--cluster", client.scheduler.address]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_shards"] == 2 and summary["n_workers"] == 2
    shard0 = next(s for s in summary["shards"] if s["shard"] == 0)
    assert shard0["n_extracted"] == 0 and shard0["n_cached"] == done.n_extracted  # resumed, not recomputed
    assert summary["n_extracted"] + summary["n_cached"] + summary["n_skipped"] == summary["n_images"] == 81
    assert summary["n_skipped"] == 1 and summary["skipped_by_kind"] == {"not_an_image": 1}
    assert_same_as_reference(store, reference)

    again = extract_distributed(data, store, cluster=client, **COMMON)
    assert (again.n_extracted, again.n_cached, again.n_skipped) == (0, 80, 1)
    assert not shard_dir(store).exists()
    # another backbone configuration is refused before any shard is sent out, as on one machine
    with pytest.raises(FingerprintMismatch, match="pooling"):
        extract_distributed(data, store, cluster=client, pooling="max", **COMMON)
    assert not shard_dir(store).exists()

    # a later run computes only the images added since (a small set of its own: `data` is shared)
    grown = make_photo_set(tmp_path / "grown", classes=("cat", "coffee"), n=6)
    grown_store = tmp_path / "grown.h5"
    extract_distributed(grown, grown_store, cluster=client, **COMMON)
    (grown / "china").mkdir()
    for f in photo_files("china", 3):
        shutil.copy2(f, grown / "china" / f.name)
    more = extract_distributed(grown, grown_store, cluster=client, **COMMON)
    assert (more.n_extracted, more.n_cached, more.n_store_rows) == (3, 12, 15)
    with FeatureStore(grown_store) as fs:
        assert fs.cnn_rows_total == 15


def test_sgd_search_runs_on_the_cluster(data, reference, client, tmp_path, capsys):
    """The out-of-core SGD search sends its candidates to the Dask workers (joblib's dask backend)."""
    from featx.classify import evaluate_store
    from featx.linear import load_classifier

    store = tmp_path / "train.h5"
    extract(data, store, backbone="mobilenet_0.25", image_size=TEST_SIZE, batch_size=BATCH, workers=1,
            progress=False)
    worker_pids = set(client.run(os.getpid).values())
    out = tmp_path / "sgd.skops"
    report = train_store_sgd(store, out, classifier="all", penalty="l2", alphas=[1e-3, 1e-1], epochs=3,
                             chunk_size=16, cluster=client)
    assert len(report.candidates) == 4
    assert {c["pid"] for c in report.candidates} <= worker_pids  # fitted on the workers, not here
    assert report.n_train == sum(1 for _, s, _ in reference["rows"].values() if s == "train")
    saved = load_classifier(out)
    assert saved.info["name"] == report.name and saved.info["cluster"]
    assert evaluate_store(out, store, split="validation")["accuracy"] > 0.5  # 4 classes: chance is 0.25
    # the command line: `featx train STORE --out M --sgd --cluster ADDRESS`
    argv = ["train", str(store), "--out", str(tmp_path / "cli.skops"), "--sgd", "--penalty", "elasticnet",
            "--alpha", "1e-2", "--chunk-size", "16", "--cluster", client.scheduler.address, "--json"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "sgd-log_loss-elasticnet"


def test_worker_killed_mid_shard_is_retried_and_each_image_stored_once(data, reference, client, tmp_path,
                                                                      monkeypatch):
    """SIGKILL the worker process extracting a shard once it has committed journal parts: Dask reruns the task
    on another worker, which resumes the shard from the dead worker's journal (its lock died with it); the
    merged store has each image exactly once and equals one machine's. The client's progress bar moves batch
    by batch while the workers run, and ends at the number of images."""
    store = tmp_path / "killed.h5"
    pids = client.run(os.getpid)  # {worker address: pid}
    outcome: dict = {}
    updates: list[int] = []

    class Bar:  # stands in for the tqdm bar
        def update(self, n: int) -> None:
            updates.append(n)

        def close(self) -> None:
            pass

    monkeypatch.setattr("featx.distributed.client._progress_bar", lambda total, enabled: Bar())

    def run() -> None:
        try:
            outcome["summary"] = extract_distributed(data, store, cluster=client, n_shards=2,
                                                     **{**COMMON, "progress": True})
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for i in (0, 1):
            parts = list(Path(f"{shard_path(store, i, 2)}.journal").glob("part-*.npz"))
            if len(parts) >= 2:  # committed batches, and more to come
                for address, keys in client.processing().items():
                    if any(f"shard-{i:05d}-of-00002" in str(k) for k in keys) and address in pids:
                        os.kill(pids[address], signal.SIGKILL)
                        killed = (i, pids[address], len(parts))
                        break
            if killed:
                break
        time.sleep(0.005)
    while thread.is_alive() and not updates and time.monotonic() < deadline:
        time.sleep(0.01)
    progress_mid_run = sum(updates) if thread.is_alive() else None
    thread.join(timeout=300)
    assert killed is not None, f"no shard was caught mid-run: {outcome}"
    assert "error" not in outcome, repr(outcome.get("error"))
    summary = outcome["summary"]
    shard, pid, committed = killed
    retried = next(s for s in summary.shards if s["shard"] == shard)
    print(f"killed worker pid {pid} in shard {shard} after {committed} committed parts; finished by pid "
          f"{retried['pid']}: {retried}")
    assert retried["pid"] != pid  # finished by another worker process
    # it took over the dead worker's committed batches instead of recomputing them
    assert retried["n_cached"] >= committed * BATCH - BATCH and retried["n_cached"] > 0
    assert summary.n_extracted + summary.n_cached + summary.n_skipped == summary.n_images == 81
    assert progress_mid_run is not None and 0 < progress_mid_run < 81  # batches reported before any shard ended
    assert sum(updates) == 81
    assert_same_as_reference(store, reference)


@pytest.mark.parametrize("visible", ["0,1", "3,5"])
def test_local_cluster_pins_one_gpu_per_worker(visible, monkeypatch):
    """`--cluster local` on a machine with CUDA_VISIBLE_DEVICES set: one worker per listed GPU, and each
    worker, once featx pins it (before its first model), sees exactly one of the ids the parent saw. No GPU
    is needed to check which id each worker gets."""
    import distributed

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    def pinned() -> dict:  # runs on the worker (pickled by value)
        import os
        import sys

        from distributed import get_worker

        from featx.distributed import _pin_gpu

        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        backend_loaded = any(m in sys.modules for m in ("tensorflow", "jax", "torch"))
        _pin_gpu()
        return {"name": get_worker().name, "before": before, "after": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "backend_loaded": backend_loaded}

    with start_local_cluster() as cluster, distributed.Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        assert len(workers) == 2  # one per listed GPU, not one per core
        seen = [client.submit(pinned, workers=[w], pure=False).result(timeout=60) for w in workers]
        again = [client.submit(pinned, workers=[w], pure=False).result(timeout=60) for w in workers]
    ids = visible.split(",")
    assert all(s["before"] == visible and not s["backend_loaded"] for s in seen)
    assert sorted((s["name"], s["after"]) for s in seen) == [(0, ids[0]), (1, ids[1])]
    assert [s["after"] for s in again] == [s["after"] for s in seen]  # pinned once, stays pinned
