"""Feature extraction: sources → (minus what the store has) → pipeline → store, and its summary."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from featx import pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone, fingerprint_id, get_spec
from featx.decode import DEFAULT_MAX_PIXELS
from featx.runtime import resolve_device, versions
from featx.sources import ImageSet, Item, assign_splits, display_path, load_source
from featx.gpudecode import DEFAULT_DECODER, BatchJpegDecoder, DecoderCounts, open_decoder
from featx.precision import DEFAULT_PRECISION, check_precision
from featx.oom import BackoffPredictor, auto_batch_size, check_batch_size
from featx.store import FEATURE_DTYPES, FeatureStore, Rows, Skips, StoreWriter, crash_point

log = logging.getLogger("featx")


@dataclass
class ExtractSummary:
    store: str
    backbone: str
    fingerprint_id: str
    random_weights: bool
    device: str
    precision: str = "float32"  # what the model computed in (featx.precision)
    decoder: str = "cpu"  # which JPEG decoder ran: "cpu" or "gpu-nvjpeg" (featx.gpudecode)
    decoder_detail: str = "cpu"  # and why (e.g. "cpu (auto: GPU decoder unavailable: ...)")
    n_gpu_decoded: int = 0  # images the batched (GPU) decoder decoded; the rest went through the CPU decoder
    n_gpu_failed: int = 0  # routed to it, failed there, handed to the CPU decoder
    n_images: int = 0  # files in the image set
    n_extracted: int = 0  # ran through the CNN in this run
    n_cached: int = 0  # already in the store, untouched
    n_reused: int = 0  # same content already in the store under another path/label: features copied
    n_skipped: int = 0
    skipped_by_kind: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # [{path, kind, reason}]
    ignored: list = field(default_factory=list)
    label_conflicts: list = field(default_factory=list)
    n_store_rows: int = 0
    n_stale_rows: int = 0  # rows of files that are not in this image set (kept unless pruned)
    splits: dict = field(default_factory=dict)
    classes: dict = field(default_factory=dict)  # labelled store rows per class
    seconds: float = 0.0
    images_per_second: float = 0.0
    # Where the extraction loop's time went (seconds; see stage_times). Measured around the existing
    # calls, so the breakdown costs a few perf_counter() calls per batch.
    loop_seconds: float = 0.0  # the whole extraction loop (what images_per_second divides by)
    decode_wait_seconds: float = 0.0  # waiting for decoded images (decode not keeping up) + batching
    gpu_decode_seconds: float = 0.0  # in the batched (GPU) decoder: upload, decode, resize, download
    model_seconds: float = 0.0  # in the model call (host->device, compute, device->host)
    store_seconds: float = 0.0  # writing rows to the store (and reading reused rows)
    batch_size: int = 0  # fed to the model at the end: smaller than asked after an out-of-memory back-off
    oom_backoffs: list = field(default_factory=list)  # [[from, to]] per halving
    interrupted: bool = False
    #: where the backbone's weights came from this run (featx.backbones.WeightsSource.to_dict():
    #: kind, origin, path, url) and their sha256 — the fingerprint's identity of the weights
    weights: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe_store(self, fs: FeatureStore, relpaths: set[str]) -> None:
        """What the store holds after the run: rows, splits, classes, rows of files not in the set
        (`relpaths`), identical content under different labels."""
        self.n_store_rows = len(fs)
        self.splits = dict(Counter(fs.splits.tolist()))
        labels = fs.y
        self.classes = {name: int((labels == i).sum()) for i, name in enumerate(fs.label_names)
                        if (labels == i).any()}
        self.n_stale_rows = sum(1 for p in fs.paths.tolist() if p not in relpaths)
        self.label_conflicts = fs.label_conflicts()
    @property
    def bottleneck(self) -> str | None:
        """The stage the loop spent most of its time in ("decode", "model" or "store"), if any ran."""
        stages = {"decode": self.decode_wait_seconds + self.gpu_decode_seconds, "model": self.model_seconds,
                  "store": self.store_seconds}
        return max(stages, key=stages.get) if self.loop_seconds > 0 and any(stages.values()) else None

    def _time_line(self) -> str:
        def part(name: str, seconds: float) -> str:
            return f"{name} {seconds:.1f} s ({100 * seconds / self.loop_seconds:.0f}%)"

        other = max(0.0, self.loop_seconds - self.decode_wait_seconds - self.gpu_decode_seconds
                    - self.model_seconds - self.store_seconds)
        gpu = f"{part('GPU decoder', self.gpu_decode_seconds)}, " if self.decoder != "cpu" else ""
        return (f"time       {part('waiting for decoded images', self.decode_wait_seconds)}, {gpu}"
                f"{part('model', self.model_seconds)}, {part('store', self.store_seconds)}, "
                f"{part('other', other)} of {self.loop_seconds:.1f} s extracting: {self.bottleneck}-bound")

    def format(self) -> str:
        lines = [
            f"store      {self.store}  ({self.n_store_rows} rows, splits {self.splits})",
            f"backbone   {self.backbone}  fingerprint {self.fingerprint_id}  device {self.device}"
            + (f"  precision {self.precision}" if self.precision != "float32" else "")
            + ("  [RANDOM WEIGHTS]" if self.random_weights else ""),
        ]
        if self.weights:
            sha = self.weights.get("sha256") or ""
            lines.append(f"weights    {self.weights.get('kind')}, {self.weights.get('origin')}"
                         + (f": {self.weights['path']}" if self.weights.get("path") else "")
                         + (f"  (sha256 {sha[:16]}…)" if sha and not sha.startswith("random:") else ""))
        lines += [
            f"images     {self.n_images} in the set: {self.n_extracted} extracted, {self.n_cached} already "
            f"cached, {self.n_reused} reused by content, {self.n_skipped} skipped",
            f"speed      {self.images_per_second:.1f} images/s while extracting, batch {self.batch_size}; "
            f"{self.seconds:.1f} s in all (model build and store merge included)",
        ]
        if self.loop_seconds > 0 and self.n_extracted:
            lines.append(self._time_line())
        lines.append(f"decoder    {self.decoder_detail}" + (
            f": {self.n_gpu_decoded} images on the device, {self.n_extracted - self.n_gpu_decoded} by the CPU "
            f"decoder ({self.n_gpu_failed} of them after the device decoder failed)" if self.decoder != "cpu" else ""))
        if self.skipped_by_kind:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_kind.items()))
            lines.append(f"skipped    by reason: {kinds}")
            for s in self.skipped[:20]:
                lines.append(f"  - {s['path']}: {s['kind']}: {s['reason']}")
            if len(self.skipped) > 20:
                lines.append(f"  … and {len(self.skipped) - 20} more (featx info --json lists all)")
        if self.ignored:
            lines.append(f"ignored    {len(self.ignored)} files or folders not taken:")
            lines += [f"  - {entry}" for entry in self.ignored[:20]]
            if len(self.ignored) > 20:
                lines.append(f"  … and {len(self.ignored) - 20} more (--json lists all)")
        if self.n_stale_rows:
            lines.append(f"note       {self.n_stale_rows} store rows are files not in this set (kept; "
                         "--prune drops them)")
        for c in self.label_conflicts:
            lines.append(f"WARNING    identical content under different labels {c['labels']}: "
                         f"{', '.join(c['paths'])} (label noise?)")
        if len(self.classes) == 1:
            lines.append(f"WARNING    one class only ({next(iter(self.classes))!r}): a classifier needs two or more "
                         "(`featx train` will refuse); class folders are DATA/<class>/*.jpg")
        if self.random_weights:
            lines.append("WARNING    features come from RANDOM weights, as asked (--weights none)")
        for old, new in self.oom_backoffs:
            lines.append(f"note       out of memory at batch {old}: continued with batch {new}")
        if self.interrupted:
            lines.append("INTERRUPTED: everything extracted so far is saved; rerun the same command to finish")
        return "\n".join(lines)


def weights_summary(bb: Backbone) -> dict:
    """Where `bb`'s weights came from, with their sha256 (for summaries)."""
    return {**bb.weights.to_dict(), "sha256": bb.fingerprint["weights_sha256"]}


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction; the store was consolidated first. `.summary` says what was done."""

    def __init__(self, summary: ExtractSummary):
        super().__init__("extraction interrupted; completed batches are saved")
        self.summary = summary


def with_decoder(fingerprint: dict, jpeg_decoder: "BatchJpegDecoder | None") -> dict:
    """The store fingerprint: the backbone's, plus the batched decoder's name when one is used (CPU-decoded
    stores, all existing ones, keep their fingerprint)."""
    return fingerprint if jpeg_decoder is None else {**fingerprint, "decoder": jpeg_decoder.name}


def check_backbone_precision(backbone: str | Backbone, precision: str | None) -> None:
    """Validate `precision`; with a built Backbone it may only repeat the backbone's own (it is baked
    into its model and fingerprint), so a request is never silently ignored."""
    if precision is None:
        return
    check_precision(precision)
    if isinstance(backbone, Backbone) and backbone.precision != precision:
        raise ValueError(f"precision={precision!r} was asked for, but the given backbone computes in "
                         f"{backbone.precision}; build it with Backbone.build(..., precision={precision!r})")


def _file_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


def extract(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    pooling: str = "avg",
    layer: str | None = None,
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
    `lock_timeout` is how long to wait for another writer (0: refuse at once; None: wait).
    `image_timeout`: seconds one image may take to read and decode before it is skipped as
    "timeout" (None: no limit), so one hung file cannot stall the run.
    `precision` (float32, bfloat16, float16; default float32) is what the model computes in; a
    non-float32 precision is part of the fingerprint, so it never mixes with float32 rows in one store.
    With a built `backbone`, its own precision is used and `precision` may only repeat it.
    `decoder`: "cpu" (default), "gpu" (torchvision's nvJPEG; an error when it cannot run) or "auto"
    (the GPU decoder when usable; the summary says which ran). See :mod:`featx.gpudecode`; a store made
    with the GPU decoder records it in its fingerprint.
    `on_progress(n)`, when given, is called after each committed batch with its number of images (a
    caller's own progress display, e.g. one bar across cluster workers).
    `weights_mirror` / `offline`: how missing ImageNet weights are fetched (see ``Backbone.build``;
    defaults FEATX_WEIGHTS_MIRROR / FEATX_OFFLINE).
    See :mod:`featx.store` for the layout and guarantees.
    """
    started = time.perf_counter()
    # Cheap argument checks first, so a typo fails before a large folder is scanned.
    if not isinstance(backbone, Backbone):
        get_spec(backbone)
    check_backbone_precision(backbone, precision)
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    check_batch_size(batch_size)
    pipeline.check_image_timeout(image_timeout)
    jpeg_decoder, decoder_detail = open_decoder(decoder)  # "gpu" that cannot run fails here, before any work
    image_set = data if isinstance(data, ImageSet) else load_source(data, allow_outside_root=allow_outside_root)
    if assign_split:
        image_set = assign_splits(
            image_set, validation_fraction=validation_fraction, test_fraction=test_fraction, seed=split_seed
        )
    bb = backbone if isinstance(backbone, Backbone) else Backbone.build(
        backbone, weights=weights, image_size=image_size, pooling=pooling, layer=layer,
        weights_mirror=weights_mirror, offline=offline, precision=precision or DEFAULT_PRECISION,
    )
    crash_point("model-built")  # test-only kill -9 hook (FEATX_TEST_CRASH_AT)
    used_device = resolve_device(device)
    fingerprint = with_decoder(bb.fingerprint, jpeg_decoder)
    fid = fingerprint_id(fingerprint)
    summary = ExtractSummary(str(store), bb.spec.name, fid, bb.random_weights, used_device, bb.precision,
                             "cpu" if jpeg_decoder is None else jpeg_decoder.name, decoder_detail,
                             n_images=len(image_set.items), ignored=list(image_set.ignored),
                             weights=weights_summary(bb))
    writer = StoreWriter(
        store, fingerprint=fingerprint, fingerprint_id=fid, feature_dtype=dtype, root=image_set.root,
        split_method=image_set.split_method, random_weights=bb.random_weights, versions=versions(),
        lock_timeout=lock_timeout,
    )
    skipped: list[dict] = []
    with writer:
        index = writer.index()
        items = image_set.items
        if image_set.split_method.get("method") == "stratified-hash":
            # The store is authoritative for images it already holds: an image never changes split
            # (adding files can shift the per-class quota; only new images follow the new quota).
            items = [replace(it, split=index.split_of(it.relpath) or it.split) for it in items]
        todo: list[Item] = []
        for item in items:
            state = _file_state(item.path)
            if state and index.unchanged(item.relpath, *state, item.label or "", item.split or ""):
                summary.n_cached += 1
            else:
                todo.append(item)
        if summary.n_cached:
            log.info("resuming: %d of %d images already in %s", summary.n_cached, len(image_set.items), store)
        if batch_size == "auto":
            batch_size, why = auto_batch_size(bb.inference_model, used_device, n_images=len(todo))
            log.info("%s", why)
        bar = _progress_bar(len(todo), progress)
        model_seconds = store_seconds = decode_wait_seconds = 0.0
        pipeline_started = time.perf_counter()

        model = BackoffPredictor(bb.predict, batch_size)  # halves the batch on out-of-memory, says so

        def predict(batch: np.ndarray) -> np.ndarray:
            nonlocal model_seconds
            t = time.perf_counter()
            out = model(batch)
            model_seconds += time.perf_counter() - t
            crash_point("predicted")
            return out

        results = pipeline.run(
            todo, predict, image_size=bb.image_size, batch_size=batch_size, workers=workers,
            known_hashes=index.by_hash, max_pixels=max_pixels, image_timeout=image_timeout,
            batch_decoder=jpeg_decoder,
        )
        counts = jpeg_decoder.counts if jpeg_decoder is not None else DecoderCounts()
        counts_before = replace(counts)
        try:
            while True:
                # One pipeline step = waiting for a batch of decoded images + the model call on it;
                # the model's share is timed inside predict(), the rest is the wait for decoding.
                step_started, model_before, gpu_before = time.perf_counter(), model_seconds, counts.seconds
                result = next(results, None)
                decode_wait_seconds += (time.perf_counter() - step_started - (model_seconds - model_before)
                                        - (counts.seconds - gpu_before))
                if result is None:
                    break
                store_started = time.perf_counter()
                pairs = result.computed + result.reused
                features = [result.features] if result.computed else []
                if result.reused:
                    features.append(writer.read_features(
                        np.array([index.by_hash[d.sha256] for _, d in result.reused], np.int64)))
                rows = Rows(
                    np.concatenate(features) if features else np.zeros((0, bb.feature_dim), np.float32),
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
                store_seconds += time.perf_counter() - store_started
                skipped += skips
                summary.n_extracted += len(result.computed)
                summary.n_reused += len(result.reused)
                bar.update(len(result))
                if on_progress is not None:
                    on_progress(len(result))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            results.close()  # stops the decode threads now on an error or Ctrl-C (not at garbage collection)
            bar.close()
            pipeline_seconds = time.perf_counter() - pipeline_started
            if prune and not summary.interrupted:
                writer.consolidate(prune_paths={item.relpath for item in image_set.items})

    summary.n_skipped = len(skipped)
    summary.skipped = [{k: s[k] for k in ("path", "kind", "reason")} for s in skipped]
    summary.skipped_by_kind = dict(Counter(s["kind"] for s in skipped))
    summary.seconds = time.perf_counter() - started
    # throughput of the extraction loop itself (model build and store consolidation excluded)
    summary.images_per_second = summary.n_extracted / pipeline_seconds if pipeline_seconds else 0.0
    summary.loop_seconds = pipeline_seconds
    summary.model_seconds = model_seconds
    summary.decode_wait_seconds = decode_wait_seconds
    summary.store_seconds = store_seconds
    summary.gpu_decode_seconds = counts.seconds - counts_before.seconds
    summary.n_gpu_decoded = counts.gpu - counts_before.gpu
    summary.n_gpu_failed = counts.gpu_failed - counts_before.gpu_failed
    if summary.n_gpu_failed:  # not silent: many of these mean the device decoder is not doing its job
        log.warning("%s failed on %d of the %d images routed to it; the CPU decoder took them (see the summary)",
                    summary.decoder, summary.n_gpu_failed, summary.n_gpu_failed + summary.n_gpu_decoded)
    summary.batch_size = model.batch_size
    summary.oom_backoffs = [list(b) for b in model.backoffs]
    with FeatureStore(store) as fs:
        crash_point("final-read")
        summary.describe_store(fs, {item.relpath for item in image_set.items})
    for c in summary.label_conflicts:
        log.debug("identical content under different labels %s: %s", c["labels"], ", ".join(c["paths"]))
    if summary.interrupted:
        raise ExtractionInterrupted(summary)
    return summary


@dataclass
class InMemoryFeatures:
    """Features of a list of images, rows in input order; skipped images have NaN rows."""

    features: np.ndarray
    sha256: list[str]
    skipped: list[dict]  # [{index, path, kind, reason}]

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.features).any(axis=1)


def extract_features(
    paths: Sequence[str | os.PathLike],
    backbone: Backbone,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: "str | BatchJpegDecoder" = DEFAULT_DECODER,
) -> InMemoryFeatures:
    """Features of `paths` without a store (for predicting); bad files become NaN rows + a skip record.
    The model's precision is the backbone's (Backbone.build(precision=...)); `decoder` as in extract()."""
    jpeg_decoder, _ = open_decoder(decoder)
    items = [Item(os.fspath(p), display_path(os.fspath(p)), None, None) for p in paths]
    position = {id(item): i for i, item in enumerate(items)}
    features = np.full((len(items), backbone.feature_dim), np.nan, np.float32)
    hashes = [""] * len(items)
    skipped: list[dict] = []
    for result in pipeline.run(items, BackoffPredictor(backbone.predict, batch_size), image_size=backbone.image_size,
                               batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                               batch_decoder=jpeg_decoder):
        for (item, decoded), row in zip(result.computed, result.features if result.computed else []):
            features[position[id(item)]] = row
            hashes[position[id(item)]] = decoded.sha256
        for item, decoded in result.skipped:
            skipped.append({"index": position[id(item)], "path": item.relpath, "kind": decoded.skip.kind,
                             "reason": decoded.skip.detail})
    skipped.sort(key=lambda s: s["index"])
    return InMemoryFeatures(features, hashes, skipped)
