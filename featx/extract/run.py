"""Step 2 of an extraction: run a plan's images through the pipeline and the model into its store,
one committed batch at a time (a crash loses at most the batch in flight), timing each stage."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from featx import pipeline
from featx.backbones import Backbone
from featx.decode import DEFAULT_MAX_PIXELS
from featx.extract.plan import ExtractionPlan, partition
from featx.gpudecode import DecoderCounts
from featx.oom import BackoffPredictor, auto_batch_size
from featx.store import Rows, Skips, StoreIndex, StoreWriter, crash_point

if TYPE_CHECKING:
    from featx.extract.summary import ExtractSummary

log = logging.getLogger("featx")


@dataclass
class LoopStats:
    """What the extraction loop did, and where its time went (seconds; see ExtractSummary)."""

    n_cached: int = 0
    n_extracted: int = 0
    n_reused: int = 0
    skipped: list = field(default_factory=list)  # [{path, kind, reason, sha256, nbytes, mtime_ns}]
    loop_seconds: float = 0.0
    model_seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    store_seconds: float = 0.0
    gpu_decode_seconds: float = 0.0
    n_gpu_decoded: int = 0
    n_gpu_failed: int = 0
    batch_size: int = 0
    oom_backoffs: list = field(default_factory=list)
    interrupted: bool = False

    def fill(self, summary: "ExtractSummary") -> None:
        for name in ("n_cached", "n_extracted", "n_reused", "loop_seconds", "model_seconds", "decode_wait_seconds",
                     "store_seconds", "gpu_decode_seconds", "n_gpu_decoded", "n_gpu_failed", "batch_size",
                     "interrupted"):
            setattr(summary, name, getattr(self, name))
        summary.oom_backoffs = [list(b) for b in self.oom_backoffs]
        summary.n_skipped = len(self.skipped)
        summary.skipped = [{k: s[k] for k in ("path", "kind", "reason")} for s in self.skipped]
        summary.skipped_by_kind = dict(Counter(s["kind"] for s in self.skipped))
        # throughput of the extraction loop itself (model build and store consolidation excluded)
        summary.images_per_second = self.n_extracted / self.loop_seconds if self.loop_seconds else 0.0


def progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


def run_plan(
    plan: ExtractionPlan,
    bb: Backbone,
    *,
    device: str,
    batch_size: int | str = "auto",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_timeout: float | None = pipeline.DEFAULT_IMAGE_TIMEOUT,
    lock_timeout: float | None = 0,
    prune: bool = False,
    progress: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> LoopStats:
    """Extract `plan`'s images not in its store with `bb` (the plan's backbone, built) on `device`.
    Ctrl-C ends the loop with ``interrupted`` set; everything committed stays."""
    plan = plan.with_backbone(bb)
    stats = LoopStats()
    with plan.writer(lock_timeout=lock_timeout) as writer:
        # Again under the lock: the store may have changed since planning (another writer, a journal
        # this writer just consolidated), and reused rows are addressed in the consolidated file.
        index = writer.index()
        _, todo = partition(plan.image_set, index)
        stats.n_cached = len(plan.image_set.items) - len(todo)
        if stats.n_cached:
            log.info("resuming: %d of %d images already in %s", stats.n_cached, len(plan.image_set.items), plan.store)
        if batch_size == "auto":
            batch_size, why = auto_batch_size(bb.inference_model, device, n_images=len(todo))
            log.info("%s", why)
        model = BackoffPredictor(bb.predict, batch_size)  # halves the batch on out-of-memory, says so

        def predict(batch: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = model(batch)
            stats.model_seconds += time.perf_counter() - t
            crash_point("predicted")
            return out

        results = pipeline.run(
            todo, predict, image_size=bb.image_size, batch_size=batch_size, workers=workers,
            known_hashes=index.by_hash, max_pixels=max_pixels, image_timeout=image_timeout,
            batch_decoder=plan.jpeg_decoder,
        )
        bar = progress_bar(len(todo), progress)
        started = time.perf_counter()
        try:
            _loop(results, writer, index, bb.feature_dim, plan.jpeg_decoder, stats, bar, on_progress)
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            results.close()  # stops the decode threads now on an error or Ctrl-C (not at garbage collection)
            bar.close()
            stats.loop_seconds = time.perf_counter() - started
            if prune and not stats.interrupted:
                writer.consolidate(prune_paths=plan.relpaths)
    stats.batch_size = model.batch_size
    stats.oom_backoffs = [list(b) for b in model.backoffs]
    return stats


def _loop(results, writer: StoreWriter, index: StoreIndex, dim: int, jpeg_decoder, stats: LoopStats, bar,
          on_progress) -> None:
    counts = jpeg_decoder.counts if jpeg_decoder is not None else DecoderCounts()
    before = replace(counts)
    try:
        while True:
            # One pipeline step = waiting for a batch of decoded images + the model call on it;
            # the model's share is timed inside predict(), the rest is the wait for decoding.
            step_started, model_before, gpu_before = time.perf_counter(), stats.model_seconds, counts.seconds
            result = next(results, None)
            stats.decode_wait_seconds += (time.perf_counter() - step_started - (stats.model_seconds - model_before)
                                          - (counts.seconds - gpu_before))
            if result is None:
                break
            store_started = time.perf_counter()
            skips = _write_batch(result, writer, index, dim)
            stats.store_seconds += time.perf_counter() - store_started
            stats.skipped += skips
            stats.n_extracted += len(result.computed)
            stats.n_reused += len(result.reused)
            bar.update(len(result))
            if on_progress is not None:
                on_progress(len(result))
    finally:
        stats.gpu_decode_seconds = counts.seconds - before.seconds
        stats.n_gpu_decoded = counts.gpu - before.gpu
        stats.n_gpu_failed = counts.gpu_failed - before.gpu_failed


def _write_batch(result: "pipeline.BatchResult", writer: StoreWriter, index: StoreIndex, dim: int) -> list[dict]:
    """Commit one batch's rows (computed, and copied for content the store holds) and skips; returns the skips."""
    pairs = result.computed + result.reused
    features = [result.features] if result.computed else []
    if result.reused:
        features.append(writer.read_features(np.array([index.by_hash[d.sha256] for _, d in result.reused], np.int64)))
    rows = Rows(
        np.concatenate(features) if features else np.zeros((0, dim), np.float32),
        np.array([d.sha256 for _, d in pairs], dtype=str),
        np.array([it.relpath for it, _ in pairs], dtype=str),
        np.array([it.label or "" for it, _ in pairs], dtype=str),
        np.array([it.split or "" for it, _ in pairs], dtype=str),
        np.array([d.nbytes for _, d in pairs], np.int64),
        np.array([d.mtime_ns for _, d in pairs], np.int64),
    )
    skips = [
        {"path": it.relpath, "kind": d.skip.kind, "reason": d.skip.detail, "sha256": d.sha256,
         "nbytes": d.nbytes, "mtime_ns": d.mtime_ns}
        for it, d in result.skipped
    ]
    writer.append(rows, Skips.from_records(skips), n_computed=len(result.computed))
    return skips
