"""Shards: the partition of an image set by a hash of each relative path, the shard stores under
``STORE.shards/``, one shard extracted in this process (``--shard i/N``, no Dask) and the merge."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from featx import pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone
from featx.config import BackboneConfig, SplitConfig
from featx.decode import DEFAULT_MAX_PIXELS
from featx.extract import ExtractSummary, check_backbone_precision, extract, plan_extraction
from featx.gpudecode import DEFAULT_DECODER
from featx.sources import ImageSet
from featx.store import MergeReport, StoreError, merge_stores
from featx.store.layout import refuse_folder

log = logging.getLogger("featx")

SHARD_NAME = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
MAX_SHARDS = 99999  # the file names have room for five digits


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


# -- one shard, no Dask (--shard i/N) ---------------------------------------------------------------------------
def extract_shard(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    shard: str | tuple[int, int],
    *,
    backbone: str | BackboneConfig | Backbone = DEFAULT_BACKBONE,
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
    check_backbone_precision(backbone, precision)
    if not isinstance(backbone, Backbone):
        backbone = BackboneConfig.coerce(backbone, weights=weights, image_size=image_size, pooling=pooling,
                                         layer=layer, precision=precision, weights_mirror=weights_mirror,
                                         offline=offline)
    split = SplitConfig(validation_fraction, test_fraction, split_seed) if assign_split else None
    # the plan of the whole set against STORE: splits of the whole set, images STORE holds left out, and
    # STORE of another (planned) fingerprint/dtype/split refused now rather than by the merge after the work
    plan = plan_extraction(data, store, backbone, split=split, dtype=dtype, batch_size=batch_size,
                           image_timeout=image_timeout, decoder=decoder, device=device,
                           allow_outside_root=allow_outside_root)
    mine = [it for it in plan.todo if shard_of(it.relpath, n) == i]
    n_in_shard = sum(1 for it in plan.image_set.items if shard_of(it.relpath, n) == i)
    if plan.fingerprint is None:  # only the model tells the fingerprint: build it to check STORE
        backbone = backbone.build()
        plan.with_backbone(backbone).check_store()
    path = shard_path(store, i, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = extract(
        replace(plan.image_set, items=mine), path, backbone=backbone, batch_size=batch_size, dtype=dtype,
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
    refuse_folder(Path(store))  # the store merged into is a file, even when it does not exist yet
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


