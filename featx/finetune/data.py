"""Fine-tuning data: the train split, a monitor part carved from it, decoded once into memory maps.

Images go through featx's own reader (same decoding, colour handling and skips as extraction)
once, into uint8 memory maps in a scratch folder; batches are read from them. Model selection
(early stopping, best checkpoint) uses a stratified part of the *train* split only; the
validation and test splits are never touched here.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featx import linear, pipeline
from featx.backbones import Backbone
from featx.finetune.settings import FinetuneError, FinetuneSettings
from featx.oom import BackoffPredictor
from featx.sources import ImageSet, Item, assign_splits

log = logging.getLogger("featx")


@dataclass
class _Images:
    """Decoded training images: rows of `pixels` in `items` order."""

    items: list[Item]
    pixels: np.ndarray  # uint8 memory map (len(items) + batch padding, H, W, 3)
    sha256: list[str]
    features: np.ndarray | None  # frozen-backbone features when asked for
    skipped: list[dict]


@dataclass
class TrainingData:
    """The decoded fit and monitor images with their class indices and the fit images' loss weights."""

    fit: _Images
    monitor: _Images
    y_fit: np.ndarray
    y_monitor: np.ndarray
    fit_weights: np.ndarray
    skipped: list[dict]


def carve_monitor_split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified, seeded split of the train items into (fit, monitor), by the same hash rule as the data split."""
    unsplit = ImageSet([replace(it, split=None) for it in items], None, "paths", [])
    marked = assign_splits(unsplit, validation_fraction=fraction, seed=seed + 1).items
    fit = [orig for orig, m in zip(items, marked) if m.split == "train"]
    monitor = [orig for orig, m in zip(items, marked) if m.split == "validation"]
    return fit, monitor


def fit_and_monitor_items(image_set: ImageSet, monitor_fraction: float,
                          split_seed: int) -> tuple[list[str], list[Item], list[Item]]:
    """Class names, fit items and monitor items of the labelled train split of a split image set."""
    train_items = [it for it in image_set.items if it.split == "train" and it.label]
    label_names = sorted({it.label for it in train_items})
    if len(label_names) < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 classes in the train split, found {label_names}")
    fit_items, monitor_items = carve_monitor_split(train_items, monitor_fraction, split_seed)
    short = sorted(c for c in label_names if sum(it.label == c for it in monitor_items) == 0)
    if short:
        raise FinetuneError(f"classes {short} have too few train images to hold some out for early stopping "
                            f"(monitor fraction {monitor_fraction})")
    return label_names, fit_items, monitor_items


def _decode_images(items: list[Item], bb: Backbone, scratch: Path, *, batch_size: int, workers: int | None,
                   with_features: bool, max_pixels: int) -> _Images:
    """Decode every item once with featx's reader into a memory map (and its frozen features, if asked)."""
    h, w = bb.image_size
    pixels = np.lib.format.open_memmap(scratch / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(items) + batch_size, h, w, 3))
    pos = 0
    predict = BackoffPredictor(bb.predict, batch_size)

    def step(batch: np.ndarray) -> np.ndarray:
        # the pipeline hands over full (padded) batches; rows past the real ones are overwritten next time
        pixels[pos:pos + len(batch)] = batch
        return predict(batch) if with_features else np.zeros((len(batch), 0), np.float32)

    kept: list[Item] = []
    hashes: list[str] = []
    features: list[np.ndarray] = []
    skipped: list[dict] = []
    for result in pipeline.run(items, step, image_size=bb.image_size, batch_size=batch_size, workers=workers,
                               max_pixels=max_pixels):
        kept += [it for it, _ in result.computed]
        hashes += [d.sha256 for _, d in result.computed]
        if result.computed:
            features.append(result.features)
        pos += len(result.computed)
        skipped += [{"path": it.relpath, "kind": d.skip.kind, "reason": d.skip.detail} for it, d in result.skipped]
    feats = np.concatenate(features) if with_features and features else None
    return _Images(kept, pixels, hashes, feats, skipped)


def decode_training_data(fit_items: list[Item], monitor_items: list[Item], label_names: list[str], bb: Backbone,
                         scratch: Path, settings: FinetuneSettings, *, workers: int | None, with_features: bool,
                         max_pixels: int) -> TrainingData:
    """Decode the fit images (with their frozen features if asked) and the monitor images into `scratch`."""
    fit = _decode_images(fit_items, bb, scratch, batch_size=settings.batch_size, workers=workers,
                         with_features=with_features, max_pixels=max_pixels)
    (scratch / "monitor").mkdir()
    mon = _decode_images(monitor_items, bb, scratch / "monitor", batch_size=settings.batch_size, workers=workers,
                         with_features=False, max_pixels=max_pixels)
    index = {name: i for i, name in enumerate(label_names)}
    y_fit = np.array([index[it.label] for it in fit.items], np.int64)
    y_mon = np.array([index[it.label] for it in mon.items], np.int64)
    missing = [c for c in label_names if index[c] not in set(y_fit.tolist()) | set(y_mon.tolist())]
    if missing or len(fit.items) == 0:
        raise FinetuneError(f"no readable train images left for classes {missing or label_names}")
    if settings.class_weight == "balanced":
        counts = np.bincount(y_fit, minlength=len(label_names)).astype(float)
        per_class = len(y_fit) / (len(label_names) * np.maximum(counts, 1))
    else:
        per_class = np.ones(len(label_names))
    skipped = sorted(fit.skipped + mon.skipped, key=lambda s: s["path"])
    return TrainingData(fit, mon, y_fit, y_mon, per_class[y_fit].astype(np.float32), skipped)


def batches(pixels: np.ndarray, y: np.ndarray, weights: np.ndarray, *, batch_size: int, shuffle: bool, seed: int):
    """A keras.utils.PyDataset over the first len(y) rows of the memory map (works under every Keras backend)."""
    import keras

    rows = np.arange(len(y))

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))

        def __len__(self) -> int:
            return math.ceil(len(rows) / batch_size)

        def __getitem__(self, i: int):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])  # sorted: sequential memmap reads
            return pixels[rows[idx]], y[idx], weights[idx]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = self.rng.permutation(len(rows))

    return Batches()


def features_from_store(store: str | os.PathLike, bb: Backbone) -> dict[str, np.ndarray]:
    """relpath → frozen features from a store made with exactly this backbone (refused otherwise)."""
    from featx.store import FeatureStore

    with FeatureStore(store) as fs:
        linear.check_fingerprint(fs.fingerprint, bb.fingerprint, what=f"store {store}")
        return dict(zip(fs.paths.tolist(), fs.X))


def probe_features(store_features: dict | None, images: _Images, bb: Backbone, batch_size: int) -> np.ndarray:
    """Frozen features of the decoded fit images: from the store when it has them all, else computed."""
    if store_features is None:
        return images.features
    if all(it.relpath in store_features for it in images.items):
        return np.stack([store_features[it.relpath] for it in images.items]).astype(np.float32)
    log.info("the store lacks some train images; computing the probe's features instead")
    n = len(images.items)
    out = [bb.predict(np.ascontiguousarray(images.pixels[i:i + batch_size])) for i in range(0, n, batch_size)]
    return np.concatenate(out)[:n]
