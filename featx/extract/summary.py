"""What an extraction did: :class:`ExtractSummary` (also the base of the distributed one), built by
:func:`new_summary` before the loop and completed by :func:`summarise` after it."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featx.store import FeatureStore, crash_point

if TYPE_CHECKING:
    from featx.backbones import Backbone
    from featx.extract.plan import ExtractionPlan
    from featx.extract.run import LoopStats

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
    views: str = "one"  # views averaged into each row (featx.featuresets): each costs one more model pass
    #: the model's cost per extracted image (all its views and layers included): what --views / --layers cost
    model_seconds_per_image: float = 0.0

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
    def nothing_extracted(self) -> bool:
        """Every image of the set was already in the store: the run had nothing to do."""
        return (self.n_images > 0 and self.n_cached == self.n_images and not self.interrupted
                and not (self.n_extracted or self.n_reused or self.n_skipped))

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
        ]
        if self.nothing_extracted:
            lines.append(f"nothing to extract: all {self.n_images} images already in the store ({self.seconds:.1f} s)")
        else:
            cost = (f" (model {1000 * self.model_seconds_per_image:.1f} ms per image"
                    + (f", {self.views} views" if self.views != "one" else "") + ")"
                    if self.model_seconds_per_image else "")
            lines.append(f"speed      {self.images_per_second:.1f} images/s while extracting{cost}, batch "
                         f"{self.batch_size}; {self.seconds:.1f} s in all (model build and store merge included)")
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


def weights_summary(bb: "Backbone") -> dict:
    """Where `bb`'s weights came from, with their sha256 (for summaries)."""
    return {**bb.weights.to_dict(), "sha256": bb.fingerprint["weights_sha256"]}


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction; the store was consolidated first. `.summary` says what was done."""

    def __init__(self, summary: ExtractSummary):
        super().__init__("extraction interrupted; completed batches are saved")
        self.summary = summary


def new_summary(plan: "ExtractionPlan", device: str, cls: type = ExtractSummary, **extra) -> ExtractSummary:
    """The summary of `plan` before its loop (its fingerprint known: planned or from the built backbone)."""
    from featx.backbones import fingerprint_id

    fp = plan.fingerprint
    return cls(str(plan.store), fp["backbone"], fingerprint_id(fp), plan.random_weights, device,
               fp.get("precision", "float32"), plan.decoder_name, plan.decoder_detail,
               n_images=len(plan.image_set.items), ignored=list(plan.image_set.ignored), weights=plan.weights,
               views=fp.get("views", "one"), **extra)


def summarise(summary: ExtractSummary, plan: "ExtractionPlan", stats: "LoopStats | None",
              started: float) -> ExtractSummary:
    """Fill `summary` with the loop's `stats` (None: no loop ran) and what the store holds now."""
    if stats is not None:
        stats.fill(summary)
        if summary.n_extracted:
            summary.model_seconds_per_image = summary.model_seconds / summary.n_extracted
    summary.seconds = time.perf_counter() - started
    if summary.n_gpu_failed:  # not silent: many of these mean the device decoder is not doing its job
        log.warning("%s failed on %d of the %d images routed to it; the CPU decoder took them (see the summary)",
                    summary.decoder, summary.n_gpu_failed, summary.n_gpu_failed + summary.n_gpu_decoded)
    describe_store(summary, plan.store, plan.relpaths)
    for c in summary.label_conflicts:
        log.debug("identical content under different labels %s: %s", c["labels"], ", ".join(c["paths"]))
    return summary


def describe_store(summary: ExtractSummary, store: Path, relpaths: set[str]) -> None:
    """The store part of `summary` (rows, splits, classes, stale rows), if the store exists."""
    if not Path(store).exists():
        return
    with FeatureStore(store) as fs:
        crash_point("final-read")
        summary.describe_store(fs, relpaths)
