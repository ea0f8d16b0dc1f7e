"""What runs on the Dask workers: one GPU per worker of a local cluster, the backbone built once per
process, the fingerprint task and the shard task (an ordinary :func:`featx.extract.extract`)."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from featx.backbones import Backbone, fingerprint_id
from featx.config import BackboneConfig
from featx.extract import extract, weights_summary, with_decoder
from featx.gpudecode import DEFAULT_DECODER, open_decoder
from featx.sources import ImageSet

PROGRESS_SECONDS = 0.5  # how often a worker reports images done to the client's progress bar

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


def worker_backbone(name: str, weights: str | None, image_size: Any, pooling: str, layer: str | None,
                    weights_mirror: str | None = None, offline: bool | None = None,
                    precision: str = "float32") -> Backbone:
    """The backbone of this configuration, built once per process and reused by every later task on it
    (``BackboneConfig(...).shared()``, which the tasks call; this name is kept for callers).

    `weights_mirror` / `offline` are the client's (a remote worker does not share its environment); a
    worker missing the ImageNet file downloads it into its own Keras cache, one process at a time
    per cache (featx.download locks the file). The cache is featx.backbones.shared_backbone's, the same
    one FeatureExtractor uses; a worker with several threads builds each model once, not once per thread."""
    return BackboneConfig(name, weights=weights, image_size=image_size, pooling=pooling, layer=layer,
                          precision=precision, weights_mirror=weights_mirror, offline=offline).shared()


def _where() -> dict:
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "worker": worker}


def _fingerprint_task(config: dict, device: str, decoder: str = DEFAULT_DECODER) -> dict:
    """The store fingerprint as this worker computes it (`config`: BackboneConfig.to_dict()), its device."""
    from featx.runtime import resolve_device, versions

    _pin_gpu()
    bb = BackboneConfig.from_dict(config).shared()
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
    bb = BackboneConfig.from_dict(config).shared()  # built once per worker process, kept for its next tasks
    summary = extract(image_set, path, backbone=bb, progress=False, assign_split=False,
                      on_progress=_ProgressReporter(topic, shard), **options)
    return {"summary": summary.to_dict(), "seconds": time.perf_counter() - started, **_where()}


