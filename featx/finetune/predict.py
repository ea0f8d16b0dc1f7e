"""A fine-tuned model on images: class probabilities (`predict_items`, `predict_images`) and metrics
on a held-out split (`evaluate`), with featx's reader doing the decoding as in extraction.

A folder without split folders is split again by the rule recorded in the model file, so the
held-out images are the ones the model never trained on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featx import metrics, pipeline
from featx.decode import DEFAULT_MAX_PIXELS
from featx.finetune.files import FinetunedModel, load_model
from featx.oom import BackoffPredictor
from featx.sources import Item, SourceError, assign_splits, display_path, load_source

log = logging.getLogger("featx")


@dataclass
class Predictions:
    """Class probabilities for items (rows in `items` order; skipped items are NaN rows)."""

    items: list[Item]
    probabilities: np.ndarray
    sha256: list[str]
    skipped: list[dict]
    seconds: float

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probabilities).any(axis=1)


def predict_items(fm: FinetunedModel, items: list[Item], *, batch_size: int = 32, workers: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions:
    """Decode with featx's reader and run the model on fixed-shape batches (padded at the end)."""
    started = time.perf_counter()
    position = {id(item): i for i, item in enumerate(items)}
    probs = np.full((len(items), len(fm.label_names)), np.nan, np.float32)
    hashes = [""] * len(items)
    skipped: list[dict] = []
    predict = BackoffPredictor(fm.predict, batch_size)  # halves the batch on out-of-memory, says so
    for result in pipeline.run(items, predict, image_size=fm.image_size, batch_size=batch_size,
                               workers=workers, max_pixels=max_pixels):
        for (item, decoded), row in zip(result.computed, result.features if result.computed else []):
            probs[position[id(item)]] = row
            hashes[position[id(item)]] = decoded.sha256
        skipped += [{"path": it.relpath, "kind": d.skip.kind, "reason": d.skip.detail} for it, d in result.skipped]
    return Predictions(items, probs, hashes, skipped, time.perf_counter() - started)


def predict_images(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, batch_size: int = 32,
                   workers: int | None = None, allow_unsafe: bool = False) -> dict:
    """`featx predict` for a fine-tuned model: same output as for a linear classifier."""
    from featx.classify import expand_images

    fm = load_model(model, allow_unsafe=allow_unsafe)
    paths = expand_images(inputs)
    out = predict_items(fm, [Item(p, display_path(p), None, None) for p in paths], batch_size=batch_size,
                        workers=workers)
    predictions = []
    for i in np.flatnonzero(out.ok):
        p = out.probabilities[i]
        predictions.append({
            "path": paths[i], "label": fm.label_names[int(p.argmax())], "sha256": out.sha256[i],
            "probabilities": {c: float(v) for c, v in zip(fm.label_names, p)}, "confidence": float(p.max()),
        })
    return {"model": str(model), "backbone": fm.info["backbone"]["backbone"],
            "random_weights": bool(fm.info.get("random_weights")), "predictions": predictions,
            "skipped": out.skipped}


def items_for_split(data: str | os.PathLike, split: str, *, split_method: dict | None = None,
                    allow_outside_root: bool = False) -> tuple[list[Item], list[str]]:
    """Labelled images of one split of a store (its recorded paths and splits) or of a data folder/CSV.

    For a folder without split folders, the split is remade with `split_method` (the rule recorded
    when the model was trained), so the held-out images are the same ones.
    """
    import h5py

    from featx.store import FeatureStore

    if os.path.isfile(data) and h5py.is_hdf5(data):
        with FeatureStore(data) as fs:
            root = fs.root
            if not root:
                raise SourceError(f"store {data} records no image root, so its images cannot be read again")
            names = fs.label_names
            items = [Item(os.path.join(root, p), p, names[int(y)] if y >= 0 else None, s)
                     for p, y, s in zip(fs.paths.tolist(), fs.y.tolist(), fs.splits.tolist())]
    else:
        image_set = load_source(data, allow_outside_root=allow_outside_root)
        method = split_method or {}
        if method.get("method") == "stratified-hash":
            image_set = assign_splits(image_set, validation_fraction=method["validation_fraction"],
                                      test_fraction=method["test_fraction"], seed=method["seed"])
        else:
            image_set = assign_splits(image_set)
        items, names = image_set.items, image_set.label_names
    chosen = [it for it in items if it.split == split and it.label]
    return chosen, sorted({it.label for it in chosen})


def evaluate(model: str | os.PathLike, data: str | os.PathLike, *, split: str = "validation",
             batch_size: int = 32, workers: int | None = None, allow_unsafe: bool = False,
             n_wrong: int = 12) -> dict:
    """Metrics of a fine-tuned model on a held-out split (of a store's recorded images, or of a data folder)."""
    if split == "train":
        raise ValueError("refusing to evaluate on the train split the model was fitted on")
    fm = load_model(model, allow_unsafe=allow_unsafe)
    items, present = items_for_split(data, split, split_method=fm.info.get("data", {}).get("split_method"))
    if not items:
        raise ValueError(f"{data} has no labelled images in split {split!r}")
    unknown = sorted(set(present) - set(fm.label_names))
    if unknown:
        raise ValueError(f"the {split} split has classes the model never saw: {unknown}")
    out = predict_items(fm, items, batch_size=batch_size, workers=workers)
    ok = out.ok
    if not ok.any():
        raise ValueError(f"no image of the {split} split could be read ({len(out.skipped)} skipped)")
    y_true = np.array([fm.label_names.index(it.label) for it in items], np.int64)[ok]
    probs = out.probabilities[ok]
    pred = probs.argmax(axis=1)
    result = metrics.evaluate(y_true, pred, label_names=fm.label_names, y_score=probs if probs.shape[1] == 2 else None)
    seen = set(fm.info.get("train_sha256", []))
    kept = [it for it, good in zip(items, ok) if good]
    kept_sha = [h for h, good in zip(out.sha256, ok) if good]
    result.update({
        "model": str(model), "model_name": "fine-tuned", "store": str(data), "split": split,
        "backbone": fm.info["backbone"]["backbone"], "random_weights": bool(fm.info.get("random_weights")),
        "skipped": out.skipped, "inference_seconds": out.seconds,
        "n_seen_in_training": sum(h in seen for h in kept_sha),
        "wrong": metrics.most_confidently_wrong([it.path for it in kept], y_true, pred, probs.max(axis=1),
                                                fm.label_names, k=n_wrong),
    })
    if result["n_seen_in_training"]:
        log.warning("%d image(s) of the %s split have the same content as a training image (duplicates across "
                    "splits inflate the score)", result["n_seen_in_training"], split)
    return result
