"""Step 1 of an extraction, shared by one machine (:func:`featx.extract.extract`) and a cluster
(:mod:`featx.distributed`): check the arguments, list and split the image set, know the store
fingerprint (planned from the weights file, without Keras, whenever it can be known), refuse an
incompatible store, and find what the store already holds. Nothing here builds a model, so a rerun
with nothing to do, or a store of another fingerprint, costs no backend import."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from featx import pipeline
from featx.backbones import Backbone, fingerprint_id, planned_fingerprint, planned_weights
from featx.config import BackboneConfig, SplitConfig
from featx.gpudecode import DEFAULT_DECODER, BatchJpegDecoder, open_decoder
from featx.oom import check_batch_size
from featx.precision import check_precision
from featx.runtime import DEVICES, versions
from featx.sources import ImageSet, Item, load_source
from featx.store import FEATURE_DTYPES, FeatureStore, StoreIndex, StoreWriter


@dataclass
class ExtractionPlan:
    """What an extraction will do, known before any model is built."""

    store: Path
    backbone: BackboneConfig | Backbone
    image_set: ImageSet  # splits assigned; images the store holds keep their recorded split
    todo: list[Item]  # not in the store unchanged, as read when planning
    n_cached: int
    dtype: str
    jpeg_decoder: BatchJpegDecoder | None
    decoder_detail: str
    #: the store fingerprint (the batched decoder's name included); None until a model is built when
    #: it cannot be known without one (random weights, a named layer, weights still to download)
    fingerprint: dict | None = None
    weights: dict | None = None  # where the weights come from, with their sha256 (for the summary)
    random_weights: bool = False
    store_settled: bool = False  # the store exists, has checksums and no journal parts wait for consolidation
    n_stale_rows: int = 0  # store rows of files not in the image set

    @property
    def decoder_name(self) -> str:
        return "cpu" if self.jpeg_decoder is None else self.jpeg_decoder.name

    @property
    def relpaths(self) -> set[str]:
        return {item.relpath for item in self.image_set.items}

    def nothing_to_do(self, prune: bool = False) -> bool:
        """True when the store already holds everything and is known to be this configuration's: the
        run can end here, without a model."""
        return (self.fingerprint is not None and self.store_settled and not self.todo
                and not (prune and self.n_stale_rows))

    def with_decoder(self, fingerprint: dict) -> dict:
        return with_decoder(fingerprint, self.jpeg_decoder)

    def with_backbone(self, bb: Backbone) -> "ExtractionPlan":
        """This plan with its backbone built (the fingerprint then comes from the model itself)."""
        return replace(self, backbone=bb, fingerprint=self.with_decoder(bb.fingerprint),
                       weights={**bb.weights.to_dict(), "sha256": bb.fingerprint["weights_sha256"]},
                       random_weights=bb.random_weights)

    def writer(self, *, lock_timeout: float | None = 0) -> StoreWriter:
        """The writer of this plan's store (its fingerprint must be known)."""
        return StoreWriter(self.store, fingerprint=self.fingerprint, fingerprint_id=fingerprint_id(self.fingerprint),
                           feature_dtype=self.dtype, root=self.image_set.root,
                           split_method=self.image_set.split_method, random_weights=self.random_weights,
                           versions=versions(), lock_timeout=lock_timeout)

    def check_store(self, store: str | os.PathLike | None = None) -> None:
        """Refuse now a store (default: the plan's) of another fingerprint, dtype or split, if the
        fingerprint is known."""
        if self.fingerprint is not None:
            replace(self, store=Path(store or self.store)).writer().check_compatible()


def with_decoder(fingerprint: dict, jpeg_decoder: "BatchJpegDecoder | None") -> dict:
    """The store fingerprint: the backbone's, plus the batched decoder's name when one is used (CPU-decoded
    stores, all existing ones, keep their fingerprint)."""
    return fingerprint if jpeg_decoder is None else {**fingerprint, "decoder": jpeg_decoder.name}


def check_backbone_precision(backbone: str | BackboneConfig | Backbone, precision: str | None) -> None:
    """Validate `precision`; with a built Backbone it may only repeat the backbone's own (it is baked
    into its model and fingerprint), so a request is never silently ignored."""
    if precision is None:
        return
    check_precision(precision)
    if isinstance(backbone, Backbone) and backbone.precision != precision:
        raise ValueError(f"precision={precision!r} was asked for, but the given backbone computes in "
                         f"{backbone.precision}; build it with Backbone.build(..., precision={precision!r})")


def check_arguments(dtype: str, batch_size: int | str, image_timeout: float | None, device: str = "auto") -> None:
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
    check_batch_size(batch_size)
    pipeline.check_image_timeout(image_timeout)
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def plan_extraction(
    data: str | os.PathLike | Sequence[str] | ImageSet,
    store: str | os.PathLike,
    backbone: BackboneConfig | Backbone,
    *,
    split: SplitConfig | None = SplitConfig(),
    dtype: str = "float32",
    batch_size: int | str = "auto",
    image_timeout: float | None = pipeline.DEFAULT_IMAGE_TIMEOUT,
    decoder: "str | BatchJpegDecoder | None" = DEFAULT_DECODER,
    device: str = "auto",
    allow_outside_root: bool = False,
) -> ExtractionPlan:
    """Plan the extraction of `data` into `store` (see the module docstring). `split` None leaves an
    unsplit set unsplit; `decoder` None: the decoder is chosen elsewhere (a cluster's workers), so the
    fingerprint is left unknown. Raises FingerprintMismatch for a store of another known fingerprint."""
    # Cheap argument checks first, so a typo fails before a large folder is scanned.
    if not isinstance(backbone, Backbone):
        backbone = backbone.check()
    check_arguments(dtype, batch_size, image_timeout, device)
    jpeg_decoder, decoder_detail = (None, "chosen by the workers") if decoder is None else open_decoder(decoder)
    image_set = data if isinstance(data, ImageSet) else load_source(data, allow_outside_root=allow_outside_root)
    if split is not None:
        image_set = split.apply(image_set)
    plan = ExtractionPlan(Path(store), backbone, image_set, list(image_set.items), 0, dtype, jpeg_decoder,
                          decoder_detail)
    if isinstance(backbone, Backbone):
        plan = plan.with_backbone(backbone)
    elif decoder is not None:
        plan = _with_planned_fingerprint(plan, backbone)
    plan.check_store()  # a store of another configuration is refused before any model is built
    return _against_store(plan)


def _with_planned_fingerprint(plan: ExtractionPlan, cfg: BackboneConfig) -> ExtractionPlan:
    fingerprint = planned_fingerprint(cfg)
    if fingerprint is None:
        return plan
    weights = {**planned_weights(cfg).to_dict(), "sha256": fingerprint["weights_sha256"]}
    return replace(plan, fingerprint=plan.with_decoder(fingerprint), weights=weights)


def _against_store(plan: ExtractionPlan) -> ExtractionPlan:
    """`plan` with what its store already holds: recorded splits kept, unchanged images not to do."""
    if not plan.store.exists():
        return plan
    with FeatureStore(plan.store) as fs:
        index = fs.index()
        # a store without checksums is not settled either: the run's consolidation records them
        settled = fs.pending_parts == 0 and fs.checksum_recorded
        relpaths = plan.relpaths
        n_stale = sum(1 for p in fs.paths.tolist() if p not in relpaths)
    image_set, todo = partition(plan.image_set, index)
    return replace(plan, image_set=image_set, todo=todo, n_cached=len(image_set.items) - len(todo),
                   store_settled=settled, n_stale_rows=n_stale)


def partition(image_set: ImageSet, index: StoreIndex) -> tuple[ImageSet, list[Item]]:
    """`image_set` with the splits `index` records for its images, and the images not in it unchanged."""
    items = image_set.items
    if image_set.split_method.get("method") == "stratified-hash":
        # The store is authoritative for images it already holds: an image never changes split
        # (adding files can shift the per-class quota; only new images follow the new quota).
        items = [replace(it, split=index.split_of(it.relpath) or it.split) for it in items]
    todo: list[Item] = []
    for item in items:
        state = _file_state(item.path)
        if not (state and index.unchanged(item.relpath, *state, item.label or "", item.split or "")):
            todo.append(item)
    return replace(image_set, items=items), todo


def _file_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
