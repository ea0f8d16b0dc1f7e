"""Feature extraction: sources → (minus what the store has) → pipeline → store, and its summary.

Three steps, each in its own module and shared with the cluster path (:mod:`featx.distributed`):
:func:`plan_extraction` (arguments, image set and splits, the store fingerprint — planned without a
model whenever it can be known — and what the store already holds), :func:`run_plan` (the pipeline
loop writing batches) and :func:`summarise`. A rerun with nothing to do ends after the plan, without
importing Keras; so does a store of another fingerprint (refused). :func:`extract_features` is the
store-less variant for predicting.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from featx import pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone
from featx.config import BackboneConfig, SplitConfig
from featx.decode import DEFAULT_MAX_PIXELS
from featx.extract.features import InMemoryFeatures, extract_features
from featx.extract.plan import (ExtractionPlan, _file_state, check_backbone_precision, plan_extraction,  # noqa: F401
                                with_decoder)
from featx.extract.run import LoopStats, progress_bar as _progress_bar, run_plan  # noqa: F401
from featx.extract.summary import (ExtractionInterrupted, ExtractSummary, describe_store, new_summary, summarise,
                                   weights_summary)
from featx.gpudecode import DEFAULT_DECODER, BatchJpegDecoder
from featx.runtime import resolve_device
from featx.sources import ImageSet
from featx.store import crash_point
from featx.store.writer import acquire_lock

__all__ = ["extract", "ExtractSummary", "ExtractionInterrupted", "extract_features", "InMemoryFeatures",
           "ExtractionPlan", "plan_extraction", "run_plan", "LoopStats", "summarise", "new_summary",
           "describe_store", "check_backbone_precision", "with_decoder", "weights_summary"]

#: ExtractSummary.device when no model ran (nothing to extract): no backend was asked about its devices
NO_DEVICE = "unused"


def extract(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    *,
    backbone: str | BackboneConfig | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
    views: str = "one",
    layers: Sequence[str] | str | None = None,
    batch_size: int | str = "auto",
    dtype: str = "float32",
    precision: str | None = None,
    decoder: "str | BatchJpegDecoder" = DEFAULT_DECODER,
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
    lock_timeout: float | None = 0,
    image_timeout: float | None = pipeline.DEFAULT_IMAGE_TIMEOUT,
    on_progress: Callable[[int], None] | None = None,
    weights_mirror: str | None = None,
    offline: bool | None = None,
) -> ExtractSummary:
    """Extract features of every image in `data` into the HDF5 store `store`, resumably.

    Only images not already in the store (new paths, or changed content) go through the CNN;
    a killed run loses at most the batch in flight. Unreadable files are skipped and recorded with
    their reason. A set without split folders is split (stratified, seeded) and the split is
    recorded per row (`assign_split=False` leaves unsplit sets unsplit, as for a feature cache).
    `backbone`: a registry name (with `weights`, `image_size`, `pooling`, `layer`, `views`, `layers`,
    `precision`, `weights_mirror`, `offline`; see :class:`~featx.config.BackboneConfig`), a :class:`~featx.config.BackboneConfig` (keywords given override
    it), or a built Backbone (its own precision is used and `precision` may only repeat it).
    `lock_timeout` is how long to wait for another writer (0: refuse at once; None: wait).
    `image_timeout`: seconds one image may take to read and decode before it is skipped as
    "timeout" (None: no limit), so one hung file cannot stall the run.
    `precision` (float32, bfloat16, float16; default float32) is what the model computes in; a
    non-float32 precision is part of the fingerprint, so it never mixes with float32 rows in one store.
    `decoder`: "cpu" (default), "gpu" (torchvision's nvJPEG; an error when it cannot run) or "auto"
    (the GPU decoder when usable; the summary says which ran). See :mod:`featx.gpudecode`; a store made
    with the GPU decoder records it in its fingerprint.
    `on_progress(n)`, when given, is called after each committed batch with its number of images (a
    caller's own progress display, e.g. one bar across cluster workers).
    `weights_mirror` / `offline`: how missing ImageNet weights are fetched (see ``Backbone.build``;
    defaults FEATX_WEIGHTS_MIRROR / FEATX_OFFLINE).
    When the store already holds every image (and the fingerprint is known from the weights file), the
    run ends without building a model. See :mod:`featx.store` for the layout and guarantees.
    """
    started = time.perf_counter()
    check_backbone_precision(backbone, precision)
    if not isinstance(backbone, Backbone):
        backbone = BackboneConfig.coerce(backbone, weights=weights, image_size=image_size, pooling=pooling,
                                         layer=layer, views=views, layers=layers, precision=precision,
                                         weights_mirror=weights_mirror, offline=offline)
    split = SplitConfig(validation_fraction, test_fraction, split_seed) if assign_split else None
    plan = plan_extraction(data, store, backbone, split=split, dtype=dtype, batch_size=batch_size,
                           image_timeout=image_timeout, decoder=decoder, device=device,
                           allow_outside_root=allow_outside_root)
    if plan.nothing_to_do(prune):
        lock = acquire_lock(plan.store, lock_timeout)  # a store another process writes is refused, as ever
        try:
            return summarise(new_summary(plan, NO_DEVICE, n_cached=plan.n_cached), plan, None, started)
        finally:
            lock.release()
    bb = backbone if isinstance(backbone, Backbone) else backbone.build()
    crash_point("model-built")  # test-only kill -9 hook (FEATX_TEST_CRASH_AT)
    used_device = resolve_device(device)
    plan = plan.with_backbone(bb)
    stats = run_plan(plan, bb, device=used_device, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                     image_timeout=image_timeout, lock_timeout=lock_timeout, prune=prune, progress=progress,
                     on_progress=on_progress)
    summary = summarise(new_summary(plan, used_device), plan, stats, started)
    if summary.interrupted:
        raise ExtractionInterrupted(summary)
    return summary
