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
   next tasks (``BackboneConfig.shared()``); a local cluster gives each worker one GPU when the machine has GPUs.
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

Modules: :mod:`~featx.distributed.shards` (naming, ``--shard``, merge), :mod:`~featx.distributed.cluster`
(ClusterSpec, local cluster, connect), :mod:`~featx.distributed.worker` (the tasks run on workers) and
:mod:`~featx.distributed.client` (:func:`extract_distributed`, :class:`DistributedSummary`). The client and
``--shard`` plan with :func:`featx.extract.plan_extraction` and summarise with featx.extract's steps, as one
machine does. Dask is imported only when a cluster is used: featx runs without it.
"""

from __future__ import annotations

from typing import Any

# today's names, so every import of the single module keeps working
from featx.distributed.client import (MAX_SHARD_IMAGES, MIN_SHARD_IMAGES, DistributedSummary, _progress_bar,
                                      extract_distributed)  # noqa: F401
from featx.distributed.cluster import (INSTALL_HINT, ClusterSpec, DaskUnavailable, connect, local_gpus,
                                       parse_cluster, start_local_cluster)  # noqa: F401
from featx.distributed.shards import (MAX_SHARDS, SHARD_NAME, extract_shard, list_shards, merge, parse_shard,
                                      shard_dir, shard_of, shard_path)  # noqa: F401
from featx.distributed.worker import PROGRESS_SECONDS, _pin_gpu, worker_backbone  # noqa: F401

__all__ = ["extract_distributed", "DistributedSummary", "extract_shard", "merge", "shard_of", "parse_shard",
           "shard_dir", "shard_path", "list_shards", "ClusterSpec", "parse_cluster", "connect", "local_gpus",
           "start_local_cluster", "DaskUnavailable", "worker_backbone"]


def __getattr__(name: str) -> Any:
    # train_store_sgd moved to featx.linear.store_training (it trains a classifier; this package only lends it
    # the cluster). Re-exported lazily so `from featx.distributed import train_store_sgd` keeps working without
    # `import featx.distributed` importing scikit-learn and skops.
    if name == "train_store_sgd":
        from featx.linear.store_training import train_store_sgd

        return train_store_sgd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
