"""The client of a distributed extraction: plan on the whole set (featx.extract's own step), shards
sent to the workers with one progress bar across them, then merged into STORE and summarised."""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from featx import pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone
from featx.config import BackboneConfig, SplitConfig
from featx.decode import DEFAULT_MAX_PIXELS
from featx.distributed.cluster import ClusterSpec, _require_dask, connect, parse_cluster
from featx.distributed.shards import (MAX_SHARDS, SHARD_NAME, _remove_if_empty, _shard_counts, list_shards,
                                      shard_dir, shard_of, shard_path)
from featx.distributed.worker import _extract_shard_task, _fingerprint_task
from featx.download import offline_mode, weights_mirror as _weights_mirror
from featx.extract import (ExtractionInterrupted, ExtractionPlan, ExtractSummary, describe_store, new_summary,
                           plan_extraction)
from featx.extract.plan import check_arguments
from featx.extract.run import progress_bar as _progress_bar
from featx.gpudecode import DEFAULT_DECODER
from featx.sources import ImageSet, Item
from featx.store import StoreError, merge_stores

if TYPE_CHECKING:
    from distributed import Client

# Default shard sizes. A shard costs a fixed ~0.4 s on a 2-core CPU (its decode pipeline fills while the
# model runs, its store is created and consolidated): 600 images in 4 shards ran 36% slower than in one.
# A worker's death costs at most a batch whatever the shard size (the retry resumes the shard's journal),
# so shards are only as small as load balancing wants: up to 4 per worker thread, none under MIN_SHARD_IMAGES.
MIN_SHARD_IMAGES = 5000
MAX_SHARD_IMAGES = 50000


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
    backbone: str | BackboneConfig = DEFAULT_BACKBONE,
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
    `backbone` is a registry name with its settings, or a BackboneConfig (each worker builds its own model).
    `n_shards` defaults to the count of an unfinished earlier run (so it resumes), else to one per worker
    thread, up to 4 per thread while shards keep MIN_SHARD_IMAGES. `shard_lock_timeout` is how long a shard
    task waits for its shard's lock (a retried task whose first attempt still runs). The result equals a
    single-machine run's: same rows, splits, skips and features; ``cnn_rows_total`` counts each image the CNN
    computed once. Ctrl-C raises ExtractionInterrupted; the shards keep what they committed. See the package
    docstring.
    """
    started = time.perf_counter()
    cfg = _worker_config(backbone, weights=weights, image_size=image_size, pooling=pooling, layer=layer,
                         precision=precision, weights_mirror=weights_mirror, offline=offline)
    check_arguments(dtype, batch_size, image_timeout, device)
    _check_shard_options(n_shards, shard_lock_timeout)
    distributed = _require_dask()  # before listing a big folder
    store = Path(store).absolute()  # workers may run in another directory
    # one machine's plan, on the whole set before sharding: every image gets the split one machine would give
    # it; the decoder (so the fingerprint, unless "cpu") is the workers' to tell
    split = SplitConfig(validation_fraction, test_fraction, split_seed) if assign_split else None
    plan = plan_extraction(data, store, cfg, split=split, dtype=dtype, batch_size=batch_size,
                           image_timeout=image_timeout, decoder=decoder if decoder == "cpu" else None,
                           device=device, allow_outside_root=allow_outside_root)
    existing = _existing_shard_counts(store, n_shards)
    options = {"batch_size": batch_size, "dtype": dtype, "decoder": decoder, "workers": workers, "device": device,
               "max_pixels": max_pixels, "image_timeout": image_timeout, "lock_timeout": shard_lock_timeout}
    with connect(cluster) as client:
        info = client.scheduler_info()
        threads = sum(w.get("nthreads", 1) for w in info["workers"].values()) or 1
        # one task first: the workers' fingerprint, checked against STORE before any work is sent out
        plan, used_device = _workers_plan(client, plan, cfg, device, decoder)
        n = n_shards or (min(existing) if existing else _default_shards(len(plan.todo), threads))
        groups = _by_shard(plan.todo, n)
        summary = new_summary(
            plan, used_device, cls=DistributedSummary, n_cached=plan.n_cached,
            cluster=(str(parse_cluster(cluster)) if isinstance(cluster, (str, ClusterSpec))
                     else client.scheduler.address),
            n_workers=len(info["workers"]), n_shards=n,
            shards=[{"shard": i, "path": str(shard_path(store, i, n)), "n_images": len(items)}
                    for i, items in sorted(groups.items())])
        results, loop_seconds = _run_shards(client, distributed, plan, groups, cfg, options, summary,
                                            progress=progress, started=started)
    _add_shard_results(summary, results, loop_seconds)
    _merge_shards(plan, summary, prune=prune, keep_shards=keep_shards)
    describe_store(summary, store, plan.relpaths)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_shard_options(n_shards: int | None, shard_lock_timeout: float | None) -> None:
    if n_shards is not None and not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"n_shards must be between 1 and {MAX_SHARDS}, got {n_shards}")
    if shard_lock_timeout is not None and shard_lock_timeout < 0:
        raise ValueError(f"shard_lock_timeout must be >= 0 or None, got {shard_lock_timeout}")


def _by_shard(todo: list[Item], n: int) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for item in todo:
        groups.setdefault(shard_of(item.relpath, n), []).append(item)
    return groups


def _worker_config(backbone: str | BackboneConfig, **settings) -> BackboneConfig:
    """The backbone settings every worker builds from: weights as an absolute path, and this process's
    weights mirror and offline mode (argument, else environment), so remote workers follow them."""
    if isinstance(backbone, Backbone):
        raise TypeError("extract_distributed needs the backbone's registry name (each worker builds its own), "
                        f"not a built Backbone; pass backbone={backbone.spec.name!r} and its settings")
    cfg = BackboneConfig.coerce(backbone, **settings).check()
    weights = cfg.weights
    if weights is not None and str(weights).lower() not in ("imagenet", "none", "random"):
        weights = str(Path(weights).absolute())
    return replace(cfg, weights=weights, weights_mirror=_weights_mirror(cfg.weights_mirror),
                   offline=offline_mode(cfg.offline))


def _existing_shard_counts(store: Path, n_shards: int | None) -> set[int]:
    """The partitions of shard stores an earlier run left; refuses a mix that one run cannot finish."""
    existing = _shard_counts(store)
    if n_shards is not None and existing and existing != {n_shards}:
        raise StoreError(
            f"{shard_dir(store)} holds the shards of an unfinished run split {sorted(existing)} ways; rerun with "
            f"--shards {min(existing)} to finish it, or `featx merge {store}` to keep what they hold")
    if n_shards is None and len(existing) > 1:
        raise StoreError(f"{shard_dir(store)} holds shards of runs split {sorted(existing)} ways; join them with "
                         f"`featx merge {store}` first")
    return existing


def _workers_plan(client: "Client", plan: ExtractionPlan, cfg: BackboneConfig, device: str,
                  decoder: str) -> tuple[ExtractionPlan, str]:
    """`plan` with the fingerprint a worker computes (its decoder and device as the workers run them),
    STORE checked against it; and the worker's device."""
    fp = client.submit(_fingerprint_task, cfg.to_dict(), device, decoder, pure=False,
                       key=f"featx-fingerprint-{uuid.uuid4().hex[:8]}").result()
    plan = replace(plan, fingerprint=fp["fingerprint"], weights=fp["weights"], random_weights=fp["random_weights"])
    plan.check_store()
    return plan, fp["device"]


def _run_shards(client: "Client", distributed, plan: ExtractionPlan, groups: dict[int, list[Item]],
                cfg: BackboneConfig, options: dict, summary: DistributedSummary, *, progress: bool,
                started: float) -> tuple[list[dict], float]:
    """One task per shard, the client's progress bar fed by the workers' events; the shards' results and
    the seconds they took. Ctrl-C cancels them and raises ExtractionInterrupted (committed work stays)."""
    n, store = summary.n_shards, plan.store
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
                      str(shard_path(store, i, n)), cfg.to_dict(), options, i, topic if progress else None,
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
    return results, time.perf_counter() - loop_started


def _merge_shards(plan: ExtractionPlan, summary: DistributedSummary, *, prune: bool, keep_shards: bool) -> None:
    """Join every shard file of this partition (also one a killed earlier run left), only the images sent out."""
    store, n = plan.store, summary.n_shards
    shards = [p for p in list_shards(store) if int(SHARD_NAME.match(p.name).group(2)) == n]
    keep = plan.relpaths if prune else None
    if shards:
        report = merge_stores(store, shards, only_paths={it.relpath for it in plan.todo}, prune_paths=keep,
                              remove=not keep_shards, lock_timeout=0)
        summary.merge = report.to_dict()
        if not keep_shards:
            _remove_if_empty(shard_dir(store))
    elif prune and store.exists():
        with plan.writer() as writer:
            writer.consolidate(prune_paths=keep)


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
