"""Feature transfer end to end on a store: train, evaluate and predict with saved classifiers.

The glue between the store, the linear models, the metrics and the backbone registry; it holds
no modelling or I/O logic of its own. Every step checks the backbone fingerprint, so a classifier
is never applied to features of another backbone configuration.

:func:`trained_model` is the one entry point for a trained model file, whichever kind it is: a
``.skops`` linear classifier (this module) or a ``.keras`` fine-tuned model (featx.finetune, whose
Keras import happens only for such a file); both answer ``evaluate`` and ``predict_images``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from featx import linear, metrics
from featx.backbones import Backbone, fingerprint_id
from featx.extract import extract_features
from featx.featuresets import ALL, feature_columns
from featx.sources import SourceError, walk_images
from featx.store import FeatureStore


@dataclass
class TrainReport:
    model_path: str
    name: str
    candidates: list[dict]
    n_train: int
    label_names: list[str]
    random_weights: bool
    seconds: float
    result: linear.TrainResult | None = None  # the fitted candidates (not serialised)
    features: str = ALL  # the feature set trained on (featx.featuresets)
    #: with features="best": the best CV score of each feature set tried
    feature_scores: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "result"}


def train_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classifier: str = "all",
    penalty: str = "all",
    cv: int = 5,
    class_weight: str | None = None,
    calibrate: bool = False,
    n_jobs: int | None = None,
    random_state: int = 0,
    features: str | None = None,
    Cs: Sequence[float] | None = None,
) -> TrainReport:
    """Choose and fit a linear classifier on the store's train split; save it bound to the fingerprint.

    `features`: a feature set of the store (``featx info``; featx.featuresets), ``all`` (the whole
    row, the default) or ``best``: each set and ``all`` trained, the best CV score kept (all scores in
    ``report.feature_scores``). The classifier records its set, so evaluate and predict use the same columns.
    `Cs`: the grid of C searched by CV (default featx.linear.DEFAULT_CS).
    """
    grid = {} if Cs is None else {"Cs": np.asarray(Cs, float)}
    started = time.perf_counter()
    with FeatureStore(store) as fs:
        X, y = fs.split("train")
        if len(X) == 0:
            raise ValueError(
                f"store {store} has no labelled rows in the train split (splits: {fs.info()['splits']})"
            )
        tried = []
        for name in _feature_set_names(fs, features):
            cols = feature_columns(fs.fingerprint, name)[1]
            fit = linear.train(X[:, cols], y, classifier=classifier, penalty=penalty, cv=cv,
                               class_weight=class_weight, calibrate=calibrate, random_state=random_state,
                               n_jobs=n_jobs, label_names=fs.label_names, **grid)
            tried.append((name, cols, fit))
        # the best CV score; on a tie the earlier (a single set before their concatenation)
        best = max(range(len(tried)), key=lambda i: (tried[i][2].best.cv_score_mean, -i))
        name, cols, result = tried[best]
        candidates = [dataclasses.asdict(c) for c in result.candidates]
        scores = [{"features": n, "n_features": c.stop - c.start, "name": r.name,
                   "cv_score_mean": r.best.cv_score_mean, "cv_score_std": r.best.cv_score_std} for n, c, r in tried]
        report = TrainReport(str(out), result.name, candidates, len(X), fs.label_names, fs.random_weights,
                             time.perf_counter() - started, result, name, scores if features == "best" else [])
        from featx.runtime import versions

        linear.save_classifier(
            out, result.estimator, fingerprint=fs.fingerprint, label_names=fs.label_names,
            info={
                "name": result.name,
                "candidates": candidates,
                "scoring": result.scoring,
                "cv": cv,
                "class_weight": class_weight,
                "n_train": int(len(X)),
                "store": str(Path(store).resolve()),
                "fingerprint_id": fs.fingerprint_id,
                "random_weights": fs.random_weights,
                "features": name,
                "feature_columns": [cols.start, cols.stop],
                **({"feature_scores": scores} if features == "best" else {}),
                "versions": versions(),
                "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return report


def _feature_set_names(fs: FeatureStore, features: str | None) -> list[str]:
    """The feature sets `features` asks to train on: one, or with ``best`` each set and (when there
    are several) their concatenation."""
    if features != "best":
        return [feature_columns(fs.fingerprint, features)[0]]
    sets = list(fs.feature_sets)
    return sets + [ALL] if len(sets) > 1 else [ALL]


def _map_labels(y_store: np.ndarray, store_names: list[str], model_names: list[str]) -> np.ndarray:
    unknown = sorted(set(store_names[i] for i in np.unique(y_store)) - set(model_names))
    if unknown:
        raise ValueError(f"the store has classes the classifier never saw: {unknown}")
    lookup = np.array([model_names.index(n) if n in model_names else -1 for n in store_names], np.int64)
    return lookup[y_store]


def evaluate_store(model: str | os.PathLike, store: str | os.PathLike, *, split: str = "validation") -> dict:
    """Metrics of a saved classifier on one split of a store (a split never used for selection)."""
    saved = linear.load_classifier(model)
    with FeatureStore(store) as fs:
        linear.check_fingerprint(saved.fingerprint, fs.fingerprint, what=f"store {store}")
        X, y = fs.split(split)
        X = X[:, _saved_columns(saved)]
        if len(X) == 0:
            raise ValueError(
                f"store {store} has no labelled rows in split {split!r} (splits: {fs.info()['splits']})"
            )
        if saved.info.get("store") == str(Path(store).resolve()) and split == "train":
            raise ValueError("refusing to evaluate on the train split the classifier was fitted on")
        y_true = _map_labels(y, fs.label_names, saved.label_names)
        random_weights = fs.random_weights
    pred, score = linear.predict_scores(saved.estimator, X)
    result = metrics.evaluate(y_true, pred, label_names=saved.label_names, y_score=score)
    result.update({
        "model": str(model), "model_name": saved.info.get("name"), "store": str(store), "split": split,
        "backbone": saved.fingerprint.get("backbone"), "fingerprint_id": fingerprint_id(saved.fingerprint),
        "random_weights": random_weights,
    })
    return result


def correct_by_path(model: str | os.PathLike, store: str | os.PathLike, *, split: str = "validation") -> dict[str, bool]:
    """Whether a saved classifier gets each labelled image of `split` right, by path: what pairs two
    classifiers' predictions on the same images (an exact McNemar test, a paired interval)."""
    saved = linear.load_classifier(model)
    with FeatureStore(store) as fs:
        linear.check_fingerprint(saved.fingerprint, fs.fingerprint, what=f"store {store}")
        index = fs.split_index(split)
        index = index[fs.y[index] >= 0]
        X = fs.features(index)[:, _saved_columns(saved)]
        y_true = _map_labels(fs.y[index], fs.label_names, saved.label_names)
        paths = fs.paths[index].tolist()
    pred, _ = linear.predict_scores(saved.estimator, X)
    return dict(zip(paths, (np.asarray(pred) == y_true).tolist()))


def _saved_columns(saved: linear.SavedClassifier) -> slice:
    """The columns a saved classifier was trained on (all of them for a file without a feature set)."""
    name, cols = feature_columns(saved.fingerprint, saved.info.get("features"))
    recorded = saved.info.get("feature_columns")
    if recorded is not None and [cols.start, cols.stop] != list(recorded):
        raise ValueError(f"feature set {name!r} is columns {recorded} in the classifier file but "
                         f"{[cols.start, cols.stop]} in its fingerprint; the file is inconsistent")
    return cols


def backbone_for(fingerprint: dict, weights: str | os.PathLike | None = None) -> Backbone:
    """Rebuild the exact backbone a fingerprint describes, or refuse."""
    if weights is None:
        if fingerprint["weights"] == "file":
            raise ValueError(
                "this classifier was trained on features from a user weights file (sha256 "
                f"{fingerprint['weights_sha256']}); pass the same file with --weights PATH"
            )
        weights = fingerprint["weights"]
    seed = 0
    match = re.match(r"random:seed=(\d+):", str(fingerprint.get("weights_sha256", "")))
    if match:
        seed = int(match.group(1))
    bb = Backbone.build(fingerprint["backbone"], weights=weights, image_size=tuple(fingerprint["image_size"]),
                        pooling=fingerprint.get("pooling") or "avg", layer=fingerprint.get("layer"), seed=seed,
                        precision=fingerprint.get("precision", "float32"), views=fingerprint.get("views", "one"),
                        layers=[s["name"] for s in fingerprint.get("feature_sets") or ()] or None)
    # The decoder that made the training features is not part of the backbone: new images are decoded by
    # the CPU decoder, whose features agree with the GPU decoder's to round-off (featx.gpudecode).
    backbone_part = {k: v for k, v in fingerprint.items() if k != "decoder"}
    linear.check_fingerprint(backbone_part, bb.fingerprint, what="the backbone built for prediction")
    return bb


def expand_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, folders expanded to the image files under them (sorted)."""
    paths: list[str] = []
    for entry in inputs:
        entry = os.fspath(entry)
        if os.path.isdir(entry):
            paths.extend(walk_images(Path(entry), []))
        elif os.path.lexists(entry):
            paths.append(entry)
        else:
            raise SourceError(f"{entry!r} does not exist")
    return paths


def predict_images(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> dict:
    """Predict the class of images with a saved classifier, extracting with its recorded backbone."""
    saved = linear.load_classifier(model)
    paths = expand_images(inputs)
    bb = backbone_for(saved.fingerprint, weights)
    feats = extract_features(paths, bb, batch_size=batch_size, workers=workers)
    ok = feats.ok
    predictions: list[dict] = []
    if ok.any():
        X = feats.features[ok][:, _saved_columns(saved)]
        pred, _ = linear.predict_scores(saved.estimator, X)
        proba = saved.estimator.predict_proba(X) if hasattr(saved.estimator, "predict_proba") else None
        classes = [saved.label_names[int(c)] for c in saved.estimator.classes_]
        for j, i in enumerate(np.flatnonzero(ok)):
            entry = {"path": paths[i], "label": saved.label_names[int(pred[j])], "sha256": feats.sha256[i]}
            if proba is not None:
                entry["probabilities"] = {c: float(p) for c, p in zip(classes, proba[j])}
                entry["confidence"] = float(proba[j].max())
            predictions.append(entry)
    return {
        "model": str(model),
        "backbone": saved.fingerprint["backbone"],
        "random_weights": bb.random_weights,
        "predictions": predictions,
        "skipped": [{k: s[k] for k in ("path", "kind", "reason")} for s in feats.skipped],
    }


# -- one entry point for any trained model file -----------------------------------------------------------------
class TrainedModel(Protocol):
    """A trained model file: a ``.skops`` classifier or a ``.keras`` fine-tuned model. The file is
    read by each call, so errors (missing, unsafe, another backbone) surface there, as before."""

    path: str

    def evaluate(self, data: str | os.PathLike, *, split: str = "validation", batch_size: int = 32,
                 workers: int | None = None) -> dict: ...

    def predict_images(self, inputs: Sequence[str | os.PathLike], *, weights: str | os.PathLike | None = None,
                       batch_size: int = 32, workers: int | None = None) -> dict: ...


@dataclass(frozen=True)
class _SavedClassifierFile:
    """A ``.skops`` classifier: evaluated on a store's recorded features (``batch_size`` and
    ``workers`` do not apply); predicts by extracting with its recorded backbone and ``weights``."""

    path: str

    def evaluate(self, data: str | os.PathLike, *, split: str = "validation", batch_size: int = 32,
                 workers: int | None = None) -> dict:
        return evaluate_store(self.path, data, split=split)

    def predict_images(self, inputs: Sequence[str | os.PathLike], *, weights: str | os.PathLike | None = None,
                       batch_size: int = 32, workers: int | None = None) -> dict:
        return predict_images(self.path, inputs, weights=weights, batch_size=batch_size, workers=workers)


@dataclass(frozen=True)
class _FinetunedModelFile:
    """A ``.keras`` model from ``featx finetune``: it holds its own weights, so ``weights`` does not apply."""

    path: str
    allow_unsafe: bool = False

    def evaluate(self, data: str | os.PathLike, *, split: str = "validation", batch_size: int = 32,
                 workers: int | None = None) -> dict:
        from featx.finetune import evaluate

        return evaluate(self.path, data, split=split, batch_size=batch_size, workers=workers,
                        allow_unsafe=self.allow_unsafe)

    def predict_images(self, inputs: Sequence[str | os.PathLike], *, weights: str | os.PathLike | None = None,
                       batch_size: int = 32, workers: int | None = None) -> dict:
        from featx.finetune import predict_images as predict_finetuned

        return predict_finetuned(self.path, inputs, batch_size=batch_size, workers=workers,
                                 allow_unsafe=self.allow_unsafe)


def trained_model(path: str | os.PathLike, *, allow_unsafe: bool = False) -> TrainedModel:
    """The trained model in ``path``: a fine-tuned ``.keras`` model (``allow_unsafe`` lets it hold a
    Lambda layer) or else a ``.skops`` classifier. Nothing is loaded here; Keras is imported only
    for a ``.keras`` file."""
    from featx.finetune import is_keras_file

    if is_keras_file(path):
        return _FinetunedModelFile(str(path), allow_unsafe)
    return _SavedClassifierFile(str(path))
