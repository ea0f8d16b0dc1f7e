"""Scale-out: extraction on a Dask cluster or by shard index, shards joined into one store, and the cluster
connection (:func:`connect`) that the out-of-core SGD search also runs on
(:func:`featx.linear.store_training.train_store_sgd`, still importable from here).

Distributed extraction (:func:`extract_distributed`, ``featx extract --cluster local[:N] | tcp://HOST:PORT``):

1. The client lists DATA and assigns splits on the *whole* set, exactly as one machine would; images the store
   already holds keep their recorded split, and those it holds unchanged are not sent anywhere (resumability
   across runs, as on one machine).
2. The rest is partitioned into N shards by a sha256 of each image's *relative path* (the same on every machine and
   in every run). Why the path rather than the content hash: hashing content means reading every byte of every image
   on the client, the very I/O the cluster is there to spread; the path comes free with the listing. The cost:
   identical files under two paths may land in two shards and each go through the CNN (one machine would copy the
   features), which changes nothing in the result.
3. One Dask task per shard runs the ordinary :func:`featx.extract.extract` on its images into
   ``STORE.shards/shard-00003-of-00016.h5``, a normal featx store, so journal, writer lock, resumability, skips and
   fingerprint checks are the single-machine ones. Each worker process builds its backbone once and keeps it for its
   next tasks (:func:`worker_backbone`); a local cluster gives each worker one GPU when the machine has GPUs.
4. A worker that dies mid-shard: Dask reruns the task on another worker, whose extract() takes over the shard's
   journal (the dead process's OS lock died with it; the retry still waits up to `shard_lock_timeout` for the lock,
   in case the scheduler gave up on a worker that is in fact still writing) and computes only what was not committed.
5. When every shard is done, they are merged into STORE (:func:`featx.store.merge_stores`: the StoreWriter's journal
   and atomic consolidation) and removed, so STORE is an ordinary store for every reader (FeatureStore, ``featx
   train``, ``featx info --verify``). Why a merge rather than an HDF5 virtual dataset over the shard files: with a
   VDS every reader would depend on N other files staying where they are, and the store's row replacement by path,
   skip records, journal and checksums would each need a second code path; one sequential copy of the features
   buys a store that is byte-for-byte the kind one machine writes.

Without Dask (Slurm array jobs, any scheduler): ``featx extract DATA --store STORE --shard i/N`` writes shard i
to ``STORE.shards/`` (:func:`extract_shard`), and ``featx merge STORE`` joins the shards found there (:func:`merge`).

Dask is imported here only, and only when a cluster is used: featx runs without it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from featx import pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone, fingerprint_id, get_spec, shared_backbone
from featx.decode import DEFAULT_MAX_PIXELS
from featx.download import offline_mode, weights_mirror as _weights_mirror
from featx.extract import (ExtractionInterrupted, ExtractSummary, _file_state, _progress_bar,
                           check_backbone_precision, extract, weights_summary, with_decoder)
from featx.oom import check_batch_size
from featx.gpudecode import DEFAULT_DECODER, open_decoder
from featx.precision import DEFAULT_PRECISION
from featx.sources import ImageSet, Item, assign_splits, load_source
from featx.store import (FEATURE_DTYPES, FeatureStore, MergeReport, StoreError, StoreWriter, merge_stores)

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

log = logging.getLogger("featx")

INSTALL_HINT = "pip install 'featx[dask]'"
SHARD_NAME = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
MAX_SHARDS = 99999  # the file names have room for five digits
# Default shard sizes. A shard costs a fixed ~0.4 s on a 2-core CPU (its decode pipeline fills while the
# model runs, its store is created and consolidated): 600 images in 4 shards ran 36% slower than in one.
# A worker's death costs at most a batch whatever the shard size (the retry resumes the shard's journal),
# so shards are only as small as load balancing wants: up to 4 per worker thread, none under MIN_SHARD_IMAGES.
MIN_SHARD_IMAGES = 5000
MAX_SHARD_IMAGES = 50000
PROGRESS_SECONDS = 0.5  # how often a worker reports images done to the client's progress bar


class DaskUnavailable(RuntimeError):
    """A cluster was asked for but Dask distributed is not installed."""


def _require_dask():
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailable(
            f"--cluster needs Dask distributed, which is not installed ({exc}); install it with {INSTALL_HINT} "
            "(or use --shard i/N and `featx merge`, which need no Dask)"
        ) from None
    return distributed


# -- shards ---------------------------------------------------------------------------------------------------
def shard_of(relpath: str, n_shards: int) -> int:
    """The shard of an image: a sha256 of its relative path modulo `n_shards` (the same on every machine).

    >>> shard_of("daisy/100080576_f52e8ee070_n.jpg", 16)
    3
    """
    digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()
    return int(digest[:16], 16) % n_shards


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """'i/N' (0 <= i < N) → (i, N)."""
    if isinstance(spec, tuple):
        i, n = spec
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
        if not m:
            raise ValueError(f"--shard expects i/N (shard i of N, counted from 0), got {spec!r}")
        i, n = int(m.group(1)), int(m.group(2))
    if not (1 <= n <= MAX_SHARDS and 0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 <= i < N <= {MAX_SHARDS}")
    return int(i), int(n)


def shard_dir(store: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(store)}.shards")


def shard_path(store: str | os.PathLike, i: int, n: int) -> Path:
    return shard_dir(store) / f"shard-{i:05d}-of-{n:05d}.h5"


def list_shards(store: str | os.PathLike) -> list[Path]:
    """The shard stores under ``STORE.shards/``, in shard order."""
    folder = shard_dir(store)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SHARD_NAME.match(p.name))


def _shard_counts(store: str | os.PathLike) -> set[int]:
    return {int(SHARD_NAME.match(p.name).group(2)) for p in list_shards(store)}


@dataclass
class _Plan:
    image_set: ImageSet  # splits assigned; images the store holds keep their recorded split
    todo: list[Item]  # not in the store unchanged
    n_cached: int


def _plan(image_set: ImageSet, store: Path) -> _Plan:
    """What one machine's extract() would do before its loop, done once on the client."""
    if not store.exists():
        return _Plan(image_set, list(image_set.items), 0)
    with FeatureStore(store) as fs:
        index = fs.index()
    items = image_set.items
    if image_set.split_method.get("method") == "stratified-hash":
        # the store is authoritative for images it holds (as in extract()): an image never changes split
        items = [replace(it, split=index.split_of(it.relpath) or it.split) for it in items]
    todo: list[Item] = []
    for item in items:
        state = _file_state(item.path)
        if not (state and index.unchanged(item.relpath, *state, item.label or "", item.split or "")):
            todo.append(item)
    return _Plan(replace(image_set, items=items), todo, len(items) - len(todo))


def _load(data, *, allow_outside_root: bool, assign_split: bool, validation_fraction: float,
          test_fraction: float, split_seed: int) -> ImageSet:
    image_set = data if isinstance(data, ImageSet) else load_source(data, allow_outside_root=allow_outside_root)
    if assign_split:
        # on the whole set, before sharding: every image gets the split one machine would give it
        image_set = assign_splits(image_set, validation_fraction=validation_fraction, test_fraction=test_fraction,
                                  seed=split_seed)
    return image_set


def _check_arguments(backbone, dtype: str, batch_size: int | str, image_timeout) -> None:
    if not isinstance(backbone, Backbone):
        get_spec(backbone)
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    check_batch_size(batch_size)
    pipeline.check_image_timeout(image_timeout)


# -- one shard, no Dask (--shard i/N) ---------------------------------------------------------------------------
def extract_shard(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    shard: str | tuple[int, int],
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
    batch_size: int | str = "auto",
    dtype: str = "float32",
    precision: str | None = None,
    decoder: str = DEFAULT_DECODER,
    workers: int | None = None,
    device: str = "auto",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    allow_outside_root: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    assign_split: bool = True,
    lock_timeout: float | None = 0,
    image_timeout: float | None = pipeline.DEFAULT_IMAGE_TIMEOUT,
    weights_mirror: str | None = None,
    offline: bool | None = None,
) -> ExtractSummary:
    """Extract shard ``i`` of ``N`` of `data` into ``STORE.shards/shard-i-of-N.h5``, in this process.

    For schedulers without Dask (a Slurm array job runs ``featx extract DATA --store STORE --shard $i/N``
    on each node, then ``featx merge STORE``). Splits are assigned on the whole set first, and images
    STORE already holds unchanged are left out, so the shards of all N jobs merged give what one machine's
    run would. The shard is an ordinary store: rerunning the same job resumes it.
    """
    i, n = parse_shard(shard)
    _check_arguments(backbone, dtype, batch_size, image_timeout)
    store = Path(store)
    image_set = _load(data, allow_outside_root=allow_outside_root, assign_split=assign_split,
                      validation_fraction=validation_fraction, test_fraction=test_fraction, split_seed=split_seed)
    plan = _plan(image_set, store)
    mine = [it for it in plan.todo if shard_of(it.relpath, n) == i]
    n_in_shard = sum(1 for it in plan.image_set.items if shard_of(it.relpath, n) == i)
    check_backbone_precision(backbone, precision)
    bb = backbone if isinstance(backbone, Backbone) else Backbone.build(
        backbone, weights=weights, image_size=image_size, pooling=pooling, layer=layer,
        weights_mirror=weights_mirror, offline=offline, precision=precision or DEFAULT_PRECISION)
    # refuse now what the merge would refuse after all the work: STORE of another fingerprint/dtype/split
    fingerprint = with_decoder(bb.fingerprint, open_decoder(decoder)[0])
    StoreWriter(store, fingerprint=fingerprint, fingerprint_id=fingerprint_id(fingerprint), feature_dtype=dtype,
                split_method=plan.image_set.split_method).check_compatible()
    path = shard_path(store, i, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = extract(
        replace(plan.image_set, items=mine), path, backbone=bb, batch_size=batch_size, dtype=dtype,
        decoder=decoder, workers=workers, device=device, progress=progress, max_pixels=max_pixels, assign_split=False,
        lock_timeout=lock_timeout, image_timeout=image_timeout,
    )
    # the images of this shard that STORE already holds count as cached, as on one machine
    summary.n_cached += n_in_shard - len(mine)
    summary.n_images = n_in_shard
    return summary


def merge(
    store: str | os.PathLike,
    shards: Sequence[str | os.PathLike] | None = None,
    *,
    remove: bool = False,
    lock_timeout: float | None = 0,
) -> MergeReport:
    """Merge shard stores (default: every ``STORE.shards/shard-*.h5``) into `store`; see
    :func:`featx.store.merge_stores`. Idempotent: merging again adds nothing."""
    paths = [Path(s) for s in shards] if shards else list_shards(store)
    if not paths:
        raise StoreError(f"nothing to merge into {store}: no shard stores named and none in {shard_dir(store)}")
    counts = {int(SHARD_NAME.match(p.name).group(2)) for p in paths if SHARD_NAME.match(p.name)}
    if not shards and len(counts) > 1:
        # shards of two partitions of the same set are fine to merge, but say so
        log.warning("%s holds shards of %s partitions; merging all of them", shard_dir(store), sorted(counts))
    report = merge_stores(store, paths, remove=remove, lock_timeout=lock_timeout)
    if remove:
        _remove_if_empty(shard_dir(store))
    return report


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (other files, other shards) or already gone
        pass


# -- the cluster ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterSpec:
    """``local`` / ``local:N`` (a LocalCluster started here) or a scheduler address."""

    address: str | None = None
    n_workers: int | None = None

    def __str__(self) -> str:
        if self.address:
            return self.address
        return "local" if self.n_workers is None else f"local:{self.n_workers}"


def parse_cluster(spec: str | ClusterSpec) -> ClusterSpec:
    """'local' | 'local:N' | 'tcp://HOST:PORT' (any Dask scheme://)."""
    if isinstance(spec, ClusterSpec):
        return spec
    text = str(spec).strip()
    if text == "local":
        return ClusterSpec()
    m = re.fullmatch(r"local:(\d+)", text)
    if m:
        if int(m.group(1)) < 1:
            raise ValueError(f"--cluster {text}: need at least one worker")
        return ClusterSpec(n_workers=int(m.group(1)))
    if re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", text):
        return ClusterSpec(address=text)
    raise ValueError(f"--cluster expects local, local:N or a scheduler address such as tcp://HOST:8786, got {spec!r}")


def local_gpus() -> list[str]:
    """The GPUs of this machine, as CUDA device ids (CUDA_VISIBLE_DEVICES if set, else nvidia-smi -L)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


_PINNED = False


def _pin_gpu() -> None:
    """On a worker of a local cluster started on a GPU machine: worker k sees only GPU k (mod the count).
    Runs before the worker's first backbone is built, i.e. before the Keras backend is imported."""
    global _PINNED
    gpus = [g for g in os.environ.get("FEATX_LOCAL_GPUS", "").split(",") if g]
    if not gpus or _PINNED:
        return
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return
    if any(m in sys.modules for m in ("tensorflow", "jax", "torch")):
        raise RuntimeError(f"worker {name}: the Keras backend was loaded before featx could give it one GPU; "
                           "start the workers yourself, one per GPU, with CUDA_VISIBLE_DEVICES set")
    k = int(name) if str(name).isdigit() else int(hashlib.sha256(str(name).encode()).hexdigest()[:8], 16)
    # the ids are those the parent saw (its CUDA_VISIBLE_DEVICES, inherited here, or nvidia-smi's)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
    _PINNED = True


def start_local_cluster(n_workers: int | None = None) -> "LocalCluster":
    """A LocalCluster on loopback: worker processes with one task thread each (default: one per GPU, else one
    per core), each given its share of the cores for TensorFlow's thread pool and for decoding."""
    distributed = _require_dask()
    gpus = local_gpus()
    cores = pipeline.default_workers()
    n = n_workers or len(gpus) or cores
    share = max(1, cores // n)
    # TensorFlow sizes its pool to the whole machine otherwise: N workers would each claim every core
    env = {"TF_NUM_INTRAOP_THREADS": str(share), "FEATX_DECODE_WORKERS": str(share)}
    if gpus:
        env["FEATX_LOCAL_GPUS"] = ",".join(gpus)  # read by _pin_gpu in each worker
    import dask

    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap threshold:
    # every batch's activations are then mmap'd and unmapped afresh; measured here, that made the CPU model
    # ~17% slower (113 vs 134 images/s, mobilenet_0.25, batch 64). None unsets it (read once per Nanny).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None, env=env)


@contextmanager
def connect(cluster: "str | ClusterSpec | Client", *, wait_seconds: float = 60) -> Iterator["Client"]:
    """A dask.distributed Client: to a LocalCluster started here (``local[:N]``, closed on exit), to a
    running scheduler (an address), or the Client passed in (left open)."""
    distributed = _require_dask()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    spec = parse_cluster(cluster)
    if spec.address is None:
        with start_local_cluster(spec.n_workers) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(spec.address, timeout=f"{int(wait_seconds)}s")
    except OSError as exc:
        raise OSError(f"cannot reach the Dask scheduler at {spec.address} ({exc}); start it with "
                      "`dask scheduler` and check the address and firewall") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=wait_seconds)
        except (TimeoutError, OSError):
            raise RuntimeError(f"no Dask worker joined the scheduler at {spec.address} within {wait_seconds:.0f} s; "
                               f"start workers with `dask worker {spec.address} --nworkers 1 --nthreads 1`") from None
        yield client


# -- on the workers ---------------------------------------------------------------------------------------------
def worker_backbone(name: str, weights: str | None, image_size: Any, pooling: str, layer: str | None,
                    weights_mirror: str | None = None, offline: bool | None = None,
                    precision: str = "float32") -> Backbone:
    """The backbone of this configuration, built once per process and reused by every later task on it.

    `weights_mirror` / `offline` are the client's (a remote worker does not share its environment); a
    worker missing the ImageNet file downloads it into its own Keras cache, one process at a time
    per cache (featx.download locks the file). The cache is featx.backbones.shared_backbone's, the same
    one FeatureExtractor uses; a worker with several threads builds each model once, not once per thread."""
    return shared_backbone(name, weights=weights, image_size=image_size, pooling=pooling, layer=layer,
                           precision=precision, weights_mirror=weights_mirror, offline=offline)


def _where() -> dict:
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "worker": worker}


def _fingerprint_task(config: dict, device: str, decoder: str = DEFAULT_DECODER) -> dict:
    from featx.runtime import resolve_device, versions

    _pin_gpu()
    bb = worker_backbone(**config)
    fingerprint = with_decoder(bb.fingerprint, open_decoder(decoder)[0])  # the decoder as this worker runs it
    return {"fingerprint": fingerprint, "fingerprint_id": fingerprint_id(fingerprint),
            "random_weights": bb.random_weights, "device": resolve_device(device), "versions": versions(),
            "weights": weights_summary(bb), **_where()}


class _ProgressReporter:
    """Sends images done to the client as Dask events (topic `topic`), at most every PROGRESS_SECONDS."""

    def __init__(self, topic: str | None, shard: int):
        # the first batch is reported at once: the bar moves as soon as a worker does
        self.topic, self.shard, self.pending, self.last = topic, shard, 0, time.monotonic() - PROGRESS_SECONDS
        try:
            from distributed import get_worker

            self.worker = get_worker() if topic else None
        except (ImportError, ValueError):  # not on a Dask worker
            self.worker = None

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.worker is not None and time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.worker.log_event(self.topic, {"shard": self.shard, "n": self.pending})
            self.pending, self.last = 0, time.monotonic()


def _extract_shard_task(image_set: ImageSet, path: str, config: dict, options: dict, shard: int = 0,
                        topic: str | None = None) -> dict:
    started = time.perf_counter()
    _pin_gpu()
    if options.get("workers") is None and os.environ.get("FEATX_DECODE_WORKERS"):
        options = {**options, "workers": int(os.environ["FEATX_DECODE_WORKERS"])}  # this worker's share
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    summary = extract(image_set, path, backbone=worker_backbone(**config), progress=False, assign_split=False,
                      on_progress=_ProgressReporter(topic, shard), **options)
    return {"summary": summary.to_dict(), "seconds": time.perf_counter() - started, **_where()}


# -- the client -------------------------------------------------------------------------------------------------
@dataclass
class DistributedSummary(ExtractSummary):
    """An :class:`ExtractSummary` summed over the shards, plus where and how they ran."""

    cluster: str = ""
    n_workers: int = 0
    n_shards: int = 0
    shards: list = field(default_factory=list)  # per shard: images, extracted, cached, worker, pid, seconds
    merge: dict = field(default_factory=dict)

    def format(self) -> str:
        done = [s for s in self.shards if s.get("worker")]
        hosts = sorted({s["host"] for s in done})
        text = super().format()
        text += (f"\ncluster    {self.cluster}: {self.n_workers} workers on {len(hosts) or '-'} hosts, "
                 f"{len(done)} of {self.n_shards} shards run in this pass")
        if self.merge:
            text += (f"\nmerged     {self.merge.get('rows_added', 0)} rows from the shards into {self.store} "
                     f"({self.merge.get('seconds', 0):.1f} s)")
        return text


def _default_shards(n_todo: int, threads: int) -> int:
    """One shard per worker thread at least, up to 4 per thread while shards stay >= MIN_SHARD_IMAGES,
    more when shards would exceed MAX_SHARD_IMAGES."""
    n = max(threads, min(4 * threads, math.ceil(n_todo / MIN_SHARD_IMAGES)), math.ceil(n_todo / MAX_SHARD_IMAGES))
    return max(1, min(n, n_todo, MAX_SHARDS))


def extract_distributed(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    *,
    cluster: "str | ClusterSpec | Client" = "local",
    n_shards: int | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
    batch_size: int | str = "auto",
    dtype: str = "float32",
    precision: str | None = None,
    decoder: str = DEFAULT_DECODER,
    workers: int | None = None,
    device: str = "auto",
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    allow_outside_root: bool = False,
    prune: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    assign_split: bool = True,
    image_timeout: float | None = pipeline.DEFAULT_IMAGE_TIMEOUT,
    shard_lock_timeout: float | None = 600,
    keep_shards: bool = False,
    weights_mirror: str | None = None,
    offline: bool | None = None,
) -> DistributedSummary:
    """:func:`featx.extract.extract` on a Dask cluster: shards extracted by the workers, merged into `store`.

    `cluster` is ``"local"`` (a LocalCluster on loopback, one worker process per GPU or per core),
    ``"local:N"``, a scheduler address (``"tcp://HOST:8786"``) or a ``distributed.Client``. Workers must
    read the images and write ``STORE.shards/`` at the same paths as this process (a shared file system).
    `n_shards` defaults to the count of an unfinished earlier run (so it resumes), else to one per worker
    thread, up to 4 per thread while shards keep MIN_SHARD_IMAGES. `shard_lock_timeout` is how long a shard
    task waits for its shard's lock (a retried task whose first attempt still runs). The result equals a
    single-machine run's: same rows, splits, skips and features; ``cnn_rows_total`` counts each image the CNN
    computed once. Ctrl-C raises ExtractionInterrupted; the shards keep what they committed. See the module
    docstring.
    """
    started = time.perf_counter()
    if isinstance(backbone, Backbone):
        raise TypeError("extract_distributed needs the backbone's registry name (each worker builds its own), "
                        f"not a built Backbone; pass backbone={backbone.spec.name!r} and its settings")
    _check_arguments(backbone, dtype, batch_size, image_timeout)
    if n_shards is not None and not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"n_shards must be between 1 and {MAX_SHARDS}, got {n_shards}")
    if shard_lock_timeout is not None and shard_lock_timeout < 0:
        raise ValueError(f"shard_lock_timeout must be >= 0 or None, got {shard_lock_timeout}")
    distributed = _require_dask()  # before listing a big folder
    store = Path(store).absolute()  # workers may run in another directory
    image_set = _load(data, allow_outside_root=allow_outside_root, assign_split=assign_split,
                      validation_fraction=validation_fraction, test_fraction=test_fraction, split_seed=split_seed)
    plan = _plan(image_set, store)
    existing = _shard_counts(store)
    if n_shards is not None and existing and existing != {n_shards}:
        raise StoreError(
            f"{shard_dir(store)} holds the shards of an unfinished run split {sorted(existing)} ways; rerun with "
            f"--shards {min(existing)} to finish it, or `featx merge {store}` to keep what they hold")
    if n_shards is None and len(existing) > 1:
        raise StoreError(f"{shard_dir(store)} holds shards of runs split {sorted(existing)} ways; join them with "
                         f"`featx merge {store}` first")
    check_backbone_precision(backbone, precision)
    config = {"name": get_spec(backbone).name, "pooling": pooling, "layer": layer, "image_size": image_size,
              "precision": precision or DEFAULT_PRECISION,
              "weights": weights if weights is None or str(weights).lower() in ("imagenet", "none", "random")
              else str(Path(weights).absolute()),
              # this process's settings (argument, else environment), so remote workers follow them
              "weights_mirror": _weights_mirror(weights_mirror), "offline": offline_mode(offline)}
    options = {"batch_size": batch_size, "dtype": dtype, "decoder": decoder, "workers": workers, "device": device,
               "max_pixels": max_pixels, "image_timeout": image_timeout, "lock_timeout": shard_lock_timeout}

    with connect(cluster) as client:
        info = client.scheduler_info()
        threads = sum(w.get("nthreads", 1) for w in info["workers"].values()) or 1
        # one task first: the workers' fingerprint, checked against STORE before any work is sent out
        fp = client.submit(_fingerprint_task, config, device, decoder, pure=False,
                           key=f"featx-fingerprint-{uuid.uuid4().hex[:8]}").result()
        StoreWriter(store, fingerprint=fp["fingerprint"], fingerprint_id=fp["fingerprint_id"], feature_dtype=dtype,
                    split_method=plan.image_set.split_method).check_compatible()
        n = n_shards or (min(existing) if existing else _default_shards(len(plan.todo), threads))
        groups: dict[int, list[Item]] = {}
        for item in plan.todo:
            groups.setdefault(shard_of(item.relpath, n), []).append(item)
        summary = DistributedSummary(
            str(store), fp["fingerprint"]["backbone"], fp["fingerprint_id"], fp["random_weights"], fp["device"],
            fp["fingerprint"].get("precision", DEFAULT_PRECISION),
            n_images=len(plan.image_set.items), n_cached=plan.n_cached, ignored=list(image_set.ignored),
            weights=fp["weights"],
            cluster=(str(parse_cluster(cluster)) if isinstance(cluster, (str, ClusterSpec))
                     else client.scheduler.address),
            n_workers=len(info["workers"]), n_shards=n,
            shards=[{"shard": i, "path": str(shard_path(store, i, n)), "n_images": len(items)}
                    for i, items in sorted(groups.items())],
        )
        token = uuid.uuid4().hex[:8]
        by_shard = {s["shard"]: s for s in summary.shards}
        bar = _progress_bar(len(plan.todo), progress)
        reported = Counter()  # images each shard's workers said they did (a retry may repeat a lost batch)
        lock = threading.Lock()

        def on_event(event) -> None:  # in the client's event loop: progress across workers, batch by batch
            msg = event[1]
            with lock:
                step = min(msg["n"], by_shard[msg["shard"]]["n_images"] - reported[msg["shard"]])
                reported[msg["shard"]] += step
            if step > 0:
                bar.update(step)

        topic = f"featx-progress-{token}"
        if progress:
            client.subscribe_topic(topic, on_event)
        futures = {
            client.submit(_extract_shard_task, replace(plan.image_set, items=items, ignored=[]),
                          str(shard_path(store, i, n)), config, options, i, topic if progress else None,
                          pure=False, key=f"featx-shard-{i:05d}-of-{n:05d}-{token}"): i
            for i, items in sorted(groups.items())
        }
        loop_started = time.perf_counter()
        results: list[dict] = []
        try:
            for future in distributed.as_completed(list(futures)):
                i = futures[future]
                try:
                    result = future.result()
                except distributed.KilledWorker:
                    raise RuntimeError(
                        f"shard {i} of {n}: the workers running it died repeatedly (out of memory? killed?); "
                        f"finished shards are kept in {shard_dir(store)}: rerun the same command to continue"
                    ) from None
                results.append(result)
                s = result["summary"]
                by_shard[i].update(n_extracted=s["n_extracted"], n_cached=s["n_cached"], n_reused=s["n_reused"],
                                   n_skipped=s["n_skipped"], device=s["device"], seconds=result["seconds"],
                                   host=result["host"], worker=result["worker"], pid=result["pid"])
                with lock:  # the rest of the shard: its images cached in the shard store, the last events
                    rest, reported[i] = by_shard[i]["n_images"] - reported[i], by_shard[i]["n_images"]
                bar.update(rest)
        except BaseException as exc:
            client.cancel(list(futures))  # the shards keep what they committed; a rerun resumes them
            if isinstance(exc, KeyboardInterrupt):
                summary.interrupted = True
                _add_shard_results(summary, results, time.perf_counter() - loop_started)
                summary.seconds = time.perf_counter() - started
                raise ExtractionInterrupted(summary) from None
            raise
        finally:
            if progress:
                client.unsubscribe_topic(topic)
            bar.close()
        loop_seconds = time.perf_counter() - loop_started
    _add_shard_results(summary, results, loop_seconds)

    # join: every shard file of this partition (also one a killed earlier run left), only the images sent out
    shards = [p for p in list_shards(store) if int(SHARD_NAME.match(p.name).group(2)) == n]
    keep = {item.relpath for item in plan.image_set.items} if prune else None
    if shards:
        report = merge_stores(store, shards, only_paths={it.relpath for it in plan.todo}, prune_paths=keep,
                              remove=not keep_shards, lock_timeout=0)
        summary.merge = report.to_dict()
        if not keep_shards:
            _remove_if_empty(shard_dir(store))
    elif prune and store.exists():
        with StoreWriter(store, fingerprint=fp["fingerprint"], fingerprint_id=fp["fingerprint_id"],
                         feature_dtype=dtype) as writer:
            writer.consolidate(prune_paths=keep)
    _finish_summary(summary, store, plan.image_set)
    summary.seconds = time.perf_counter() - started
    return summary


def _add_shard_results(summary: DistributedSummary, results: list[dict], loop_seconds: float) -> None:
    skipped: list[dict] = []
    for r in results:
        s = r["summary"]
        summary.n_extracted += s["n_extracted"]
        summary.n_cached += s["n_cached"]
        summary.n_reused += s["n_reused"]
        summary.model_seconds += s["model_seconds"]  # summed over the workers (busy seconds, not wall time)
        summary.decode_wait_seconds += s["decode_wait_seconds"]
        summary.store_seconds += s["store_seconds"]
        summary.n_gpu_decoded += s["n_gpu_decoded"]
        summary.n_gpu_failed += s["n_gpu_failed"]
        summary.gpu_decode_seconds += s["gpu_decode_seconds"]
        if s["decoder"] != "cpu":
            summary.decoder, summary.decoder_detail = s["decoder"], s["decoder_detail"]
        summary.oom_backoffs += s["oom_backoffs"]
        skipped += s["skipped"]
    summary.skipped = skipped
    summary.n_skipped = len(skipped)
    summary.skipped_by_kind = dict(Counter(s["kind"] for s in skipped))
    summary.batch_size = min((r["summary"]["batch_size"] for r in results), default=0)
    devices = sorted({r["summary"]["device"] for r in results})
    if devices:
        summary.device = ",".join(devices)
    # throughput of the cluster while extracting (cluster start, model builds before it and the merge excluded)
    summary.images_per_second = summary.n_extracted / loop_seconds if loop_seconds else 0.0


def _finish_summary(summary: ExtractSummary, store: Path, image_set: ImageSet) -> None:
    if not store.exists():
        return
    with FeatureStore(store) as fs:
        summary.describe_store(fs, {item.relpath for item in image_set.items})


def __getattr__(name: str) -> Any:
    # train_store_sgd moved to featx.linear.store_training (it trains a classifier; this module only lends it
    # the cluster). Re-exported lazily so `from featx.distributed import train_store_sgd` keeps working without
    # `import featx.distributed` importing scikit-learn and skops.
    if name == "train_store_sgd":
        from featx.linear.store_training import train_store_sgd

        return train_store_sgd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
