"""Features of a list of images without a store (for predicting): rows in input order, NaN for a skip."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featx import pipeline
from featx.backbones import Backbone
from featx.decode import DEFAULT_MAX_PIXELS
from featx.gpudecode import DEFAULT_DECODER, BatchJpegDecoder, open_decoder
from featx.oom import BackoffPredictor
from featx.sources import Item, display_path


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
