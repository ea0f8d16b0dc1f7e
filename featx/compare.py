"""`featx compare`: is fine-tuning worth it on this data? Both ways, same backbone, weights, split and seed.

Feature transfer (logistic regression and linear SVM, L1 and L2, C by cross-validation on the
train split) and parameter transfer (LP-FT fine-tuning, early stopping on part of the train
split) are fitted on the train split only and judged once on one held-out split (validation or
test) that no selection ever saw: the verdict's best probe is the one with the best train-split
CV score, and it is compared with the fine-tuned model image by image on the held-out split
(exact McNemar test, 95% interval of the difference: featx.stats, featx.report.verdict). The
extraction store is shared: the probes train on it and the fine-tuned head starts from a probe
fitted on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from featx import finetune as ft
from featx import linear, metrics
from featx.config import DEFAULT_BACKBONE, BackboneConfig, SplitConfig
from featx.extract import extract
from featx.runtime import backend_name, versions
from featx.sources import ImageSet, SourceError, load_source
from featx.store import FeatureStore

log = logging.getLogger("featx")


@dataclass
class CompareResult:
    out_dir: str
    files: dict  # {"json", "md", "html"} → path
    verdict: dict
    report: dict


@dataclass
class _HeldOut:
    """What the probes train on and every model is judged on, read once from the store."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_eval: np.ndarray
    y_eval: np.ndarray
    eval_relpaths: list[str]  # the held-out images, in the order of every model's "correct"
    eval_paths: list[str]
    label_names: list[str]
    fingerprint: dict
    fingerprint_id: str
    random_weights: bool
    skipped: list[dict]


def _load_split(data, split: str, splits: SplitConfig, allow_outside_root: bool) -> ImageSet:
    """The image set with its splits, or a clear error when the held-out or the train split is empty."""
    if split not in ("validation", "test"):
        raise SourceError(f"the held-out split must be validation or test, got {split!r}")
    image_set = splits.apply(load_source(data, allow_outside_root=allow_outside_root))
    counts = image_set.split_counts()
    if not counts.get(split):
        hint = " (use --test-fraction, or a test/ folder)" if split == "test" else ""
        raise SourceError(f"{data} has no images in the {split} split{hint}; splits: {counts}")
    if not counts.get("train"):
        raise SourceError(f"{data} has no images in the train split; splits: {counts}")
    return image_set


def _read_store(store: Path, split: str) -> _HeldOut:
    with FeatureStore(store) as fs:
        X_train, y_train = fs.split("train")
        rows = fs.split_index(split)
        rows = rows[fs.y[rows] >= 0]
        relpaths = fs.paths[rows].tolist()
        held = _HeldOut(X_train, y_train, fs.features(rows), fs.y[rows], relpaths,
                        [os.path.join(fs.root, p) for p in relpaths], fs.label_names, fs.fingerprint,
                        fs.fingerprint_id, fs.random_weights, fs.skipped)
    if len(held.X_eval) == 0:
        raise SourceError(f"no readable labelled image in the {split} split")
    return held


def _confidence(estimator, X: np.ndarray, score: np.ndarray | None) -> tuple[np.ndarray, str]:
    """How sure a linear model is of its prediction, and what that number is: the top probability,
    else the SVM's decision margin (top score minus the runner-up, or |score| for two classes)."""
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(X).max(axis=1), "probability"
    if score is None:
        return np.zeros(len(X)), "margin"
    score = np.asarray(score)
    if score.ndim == 1:
        return np.abs(score), "margin"
    top2 = np.sort(score, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0], "margin"


def _train_probes(held: _HeldOut, out: Path, store: Path, *, cv: int, n_wrong: int, **train_kw) -> list[dict]:
    """Every probe candidate, C by CV on train, saved and judged once on the held-out split."""
    log.info("training linear probes on %d train images", len(held.X_train))
    trained = linear.train(held.X_train, held.y_train, cv=cv, label_names=held.label_names, **train_kw)
    models = []
    for cand in trained.candidates:
        est = trained.estimators[cand.name]
        path = out / "models" / f"{cand.name}.skops"
        linear.save_classifier(path, est, fingerprint=held.fingerprint, label_names=held.label_names,
                               info={"name": cand.name, "candidates": [dataclasses.asdict(cand)], "cv": cv,
                                     "n_train": int(len(held.X_train)), "store": str(store.resolve()),
                                     "fingerprint_id": held.fingerprint_id, "versions": versions()})
        t = time.perf_counter()
        pred, score = linear.predict_scores(est, held.X_eval)
        seconds = time.perf_counter() - t
        confidence, kind = _confidence(est, held.X_eval, score)
        clf_name = {"logreg": "logistic regression", "svm": "linear SVM"}[cand.classifier]
        models.append({
            "name": cand.name, "kind": "feature transfer",
            "description": f"{clf_name}, {cand.penalty.upper()}, C={cand.best_C:g} ({cv}-fold CV on train)",
            "metrics": metrics.evaluate(held.y_eval, pred, label_names=held.label_names, y_score=score),
            "train_seconds": cand.fit_seconds, "inference_seconds": seconds,
            "inference_images_per_second": len(held.X_eval) / seconds if seconds > 0 else None,
            "model_bytes": path.stat().st_size, "model_path": f"models/{path.name}", "cv_score": cand.cv_score_mean,
            "correct": (pred == held.y_eval).tolist(),
            "wrong": metrics.most_confidently_wrong(held.eval_paths, held.y_eval, pred, confidence,
                                                    held.label_names, k=n_wrong, confidence_kind=kind),
        })
    return models


def _finetuned_model(finetuned, evaluation: dict, held: _HeldOut, model_path: Path, n_wrong: int) -> dict:
    """The fine-tuned model's row of the report. ``evaluation`` lists every image it got wrong, so its
    per-image correctness lines up with the probes' (None: an image it could not read)."""
    unread = {s["path"] for s in evaluation["skipped"]}  # store-relative, as held.eval_relpaths
    wrong = {w["path"] for w in evaluation["wrong"]}  # absolute, as held.eval_paths
    correct = [None if rel in unread else path not in wrong
               for rel, path in zip(held.eval_relpaths, held.eval_paths)]
    keys = ("n", "labels", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "per_class",
            "confusion_matrix", "accuracy_ci", "macro_f1_ci")
    s = finetuned.settings
    return {
        "name": "lp-ft", "kind": "fine-tune",
        "description": (f"LP-FT: head from the L2 logistic-regression probe, top {s['unfreeze']} blocks "
                        f"unfrozen, Adam lr {s['lr']:g}, {len(finetuned.history['epoch']) - 1} epochs run, "
                        f"kept epoch {finetuned.best_epoch}, augment {','.join(s['augment']) or 'none'}"),
        "metrics": {k: evaluation[k] for k in keys}, "train_seconds": finetuned.seconds,
        "inference_seconds": evaluation["inference_seconds"],
        "inference_images_per_second": evaluation["n"] / evaluation["inference_seconds"],
        "model_bytes": model_path.stat().st_size, "model_path": f"models/{model_path.name}", "cv_score": None,
        "correct": correct, "wrong": evaluation["wrong"][:n_wrong],
    }


def compare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    split: str = "validation",
    views: str = "one",
    batch_size: int = 32,
    workers: int | None = None,
    classifier: str = "all",
    penalty: str = "all",
    cv: int = 5,
    n_jobs: int | None = None,
    epochs: int = 10,
    unfreeze: int | str = 2,
    lr: float = 1e-4,
    augment: str | Sequence[str] | None = ft.DEFAULT_AUGMENT,
    mixed_precision: bool | str = False,
    patience: int = 3,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    seed: int = 0,
    allow_outside_root: bool = False,
    progress: bool = True,
    n_wrong: int = 12,
) -> CompareResult:
    """Run feature transfer and fine-tuning on `data`, evaluate both on `split`, write the report to `out`.

    `views` ("one", "flip", "flip+crops"; featx.featuresets) are averaged into the probes' features;
    the fine-tuned network sees one view per image. Writes ``out/features.h5`` (the store; a rerun reuses it), ``out/models/*.skops`` and
    ``out/models/finetuned.keras``, and ``out/report.{md,json,html}`` with ``out/assets/``.
    """
    from featx.report import embedding_2d, write_report

    bb = BackboneConfig.coerce(backbone, weights=weights, image_size=image_size, views=views).check()
    splits = SplitConfig(validation_fraction, test_fraction, split_seed).check()
    # checked now, so a bad fine-tuning setting fails before the extraction, not after it
    training = ft.FinetuneSettings(epochs=epochs, unfreeze=unfreeze, lr=lr, augment=augment, batch_size=batch_size,
                                   mixed_precision=mixed_precision, patience=patience, seed=seed)
    training.check()
    image_set = _load_split(data, split, splits, allow_outside_root)
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)

    # 1. extraction (shared by every feature-transfer model and by the fine-tuned head's start)
    store = out / "features.h5"
    summary = extract(image_set, store, backbone=bb, batch_size=batch_size, workers=workers, progress=progress)
    held = _read_store(store, split)

    # 2. feature transfer: every candidate, C by CV on train, each judged once on the held-out split
    models = _train_probes(held, out, store, cv=cv, n_wrong=n_wrong, classifier=classifier, penalty=penalty,
                           n_jobs=n_jobs, random_state=seed)

    # 3. parameter transfer: LP-FT from the same store, judged on the same held-out images. Every wrong
    # image is listed (n_wrong=all) so its per-image correctness pairs with the probes' for the verdict.
    model_path = out / "models" / "finetuned.keras"
    # fine-tuning trains and predicts on one view per image (its augmentation already flips); its probe head
    # starts from the store's features only when they are one-view features of the same network
    one_view = replace(bb, views="one", layers=None)
    finetuned = ft.finetune(image_set, model_path, backbone=one_view, settings=training,
                            store=store if one_view == bb else None, workers=workers,
                            split_seed=splits.seed)
    evaluation = ft.evaluate(model_path, store, split=split, batch_size=batch_size, workers=workers,
                             n_wrong=len(held.X_eval))
    models.append(_finetuned_model(finetuned, evaluation, held, model_path, n_wrong))
    if evaluation["n"] != len(held.X_eval):
        log.warning("fine-tuned model evaluated on %d images, feature transfer on %d", evaluation["n"],
                    len(held.X_eval))

    # 4. the report
    report = _report(data, split, summary, held, models, finetuned,
                     embedding=embedding_2d(held.X_eval, held.y_eval, seed=seed))
    files = write_report(report, out)
    written = json.loads(Path(files["json"]).read_text())
    return CompareResult(str(out), files, written.get("verdict", {}), written)


def _notes(split: str, summary, held: _HeldOut, finetuned) -> list[str]:
    notes = []
    if held.random_weights:
        notes.append("The backbone has RANDOM weights (--weights none): these numbers say nothing about "
                     "pretrained transfer.")
    for c in summary.label_conflicts:
        notes.append(f"Identical content under different labels {c['labels']}: {', '.join(c['paths'])} "
                     "(label noise).")
    notes.append("Inference time of feature-transfer models counts the linear model only; add the extraction "
                 f"time per image ({summary.seconds / max(1, summary.n_extracted + summary.n_cached):.4f} s "
                 "here) for new images. The fine-tuned model's inference time includes decoding and the CNN.")
    notes.append(f"The fine-tuned model was selected on {finetuned.n_monitor} images held out from the train "
                 f"split, the best linear probe by its CV score on the train split; the {split} split was used "
                 "only for the numbers in this report.")
    return notes


def _report(data, split: str, summary, held: _HeldOut, models: list[dict], finetuned, *, embedding: dict) -> dict:
    """The report dict featx.report.write_report renders."""
    fp = held.fingerprint
    return {
        "title": f"featx compare: {Path(os.fspath(data)).name}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"source": str(Path(os.fspath(data)).resolve()), "label_names": held.label_names,
                 "splits": summary.splits, "eval_split": split, "eval_images": held.eval_relpaths},
        "backbone": {"name": fp["backbone"], "weights": fp["weights"], "image_size": fp["image_size"],
                     "fingerprint_id": held.fingerprint_id, "random_weights": held.random_weights},
        "versions": {**versions(), "backend": backend_name()},
        "extraction": {"seconds": summary.seconds, "images": summary.n_extracted,
                       "images_per_second": summary.images_per_second, "cached": summary.n_cached},
        "models": models,
        "finetune": {
            "history": finetuned.history, "best_epoch": finetuned.best_epoch, "settings": finetuned.settings,
            "probe": finetuned.probe, "unfrozen_blocks": finetuned.unfrozen_blocks, "timings": finetuned.timings},
        "embedding": embedding,
        "skipped": [{k: s[k] for k in ("path", "kind", "reason")} for s in held.skipped],
        "notes": _notes(split, summary, held, finetuned),
    }
