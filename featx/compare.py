"""`featx compare`: is fine-tuning worth it on this data? Both ways, same backbone, weights, split and seed.

Feature transfer (logistic regression and linear SVM, L1 and L2, C by cross-validation on the
train split) and parameter transfer (LP-FT fine-tuning, early stopping on part of the train
split) are fitted on the train split only and judged once on one held-out split (validation or
test) that no selection ever saw. The extraction store is shared: the probes train on it and the
fine-tuned head starts from a probe fitted on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from featx import finetune as ft
from featx import linear, metrics
from featx.backbones import DEFAULT_BACKBONE
from featx.extract import extract
from featx.runtime import backend_name, versions
from featx.sources import SourceError, assign_splits, load_source
from featx.store import FeatureStore

log = logging.getLogger("featx")


@dataclass
class CompareResult:
    out_dir: str
    files: dict  # {"json", "md", "html"} → path
    verdict: dict
    report: dict


def _confidence(estimator, X: np.ndarray, score: np.ndarray | None) -> np.ndarray:
    """How sure a linear model is of its prediction: top probability, else the SVM's margin."""
    if hasattr(estimator, "predict_proba"):
        return estimator.predict_proba(X).max(axis=1)
    if score is None:
        return np.zeros(len(X))
    score = np.asarray(score)
    if score.ndim == 1:
        return np.abs(score)
    top2 = np.sort(score, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    split: str = "validation",
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

    Writes ``out/features.h5`` (the store; a rerun reuses it), ``out/models/*.skops`` and
    ``out/models/finetuned.keras``, and ``out/report.{md,json,html}`` with ``out/assets/``.
    """
    from featx.report import embedding_2d, write_report

    if split not in ("validation", "test"):
        raise SourceError(f"the held-out split must be validation or test, got {split!r}")
    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    image_set = assign_splits(load_source(data, allow_outside_root=allow_outside_root),
                              validation_fraction=validation_fraction, test_fraction=test_fraction, seed=split_seed)
    counts = image_set.split_counts()
    if not counts.get(split):
        hint = " (use --test-fraction, or a test/ folder)" if split == "test" else ""
        raise SourceError(f"{data} has no images in the {split} split{hint}; splits: {counts}")
    if not counts.get("train"):
        raise SourceError(f"{data} has no images in the train split; splits: {counts}")

    # 1. extraction (shared by every feature-transfer model and by the fine-tuned head's start)
    store = out / "features.h5"
    summary = extract(image_set, store, backbone=backbone, weights=weights, image_size=image_size,
                      batch_size=batch_size, workers=workers, progress=progress)
    with FeatureStore(store) as fs:
        X_train, y_train = fs.split("train")
        eval_rows = fs.split_index(split)
        eval_rows = eval_rows[fs.y[eval_rows] >= 0]
        X_eval, y_eval = fs.features(eval_rows), fs.y[eval_rows]
        eval_paths = [os.path.join(fs.root, p) for p in fs.paths[eval_rows].tolist()]
        label_names, fingerprint, fid = fs.label_names, fs.fingerprint, fs.fingerprint_id
        random_weights, store_skipped = fs.random_weights, fs.skipped
    if len(X_eval) == 0:
        raise SourceError(f"no readable labelled image in the {split} split")

    # 2. feature transfer: every candidate, C by CV on train, each judged once on the held-out split
    log.info("training linear probes on %d train images", len(X_train))
    trained = linear.train(X_train, y_train, classifier=classifier, penalty=penalty, cv=cv, n_jobs=n_jobs,
                           random_state=seed, label_names=label_names)
    models: list[dict] = []
    for cand in trained.candidates:
        est = trained.estimators[cand.name]
        path = out / "models" / f"{cand.name}.skops"
        linear.save_classifier(path, est, fingerprint=fingerprint, label_names=label_names,
                               info={"name": cand.name, "candidates": [dataclasses.asdict(cand)], "cv": cv,
                                     "n_train": int(len(X_train)), "store": str(store.resolve()),
                                     "fingerprint_id": fid, "versions": versions()})
        t = time.perf_counter()
        pred, score = linear.predict_scores(est, X_eval)
        seconds = time.perf_counter() - t
        result = metrics.evaluate(y_eval, pred, label_names=label_names, y_score=score)
        clf_name = {"logreg": "logistic regression", "svm": "linear SVM"}[cand.classifier]
        models.append({
            "name": cand.name, "kind": "feature transfer",
            "description": f"{clf_name}, {cand.penalty.upper()}, C={cand.best_C:g} ({cv}-fold CV on train)",
            "metrics": result, "train_seconds": cand.fit_seconds, "inference_seconds": seconds,
            "inference_images_per_second": len(X_eval) / seconds if seconds > 0 else None,
            "model_bytes": path.stat().st_size, "model_path": f"models/{path.name}", "cv_score": cand.cv_score_mean,
            "wrong": metrics.most_confidently_wrong(eval_paths, y_eval, pred, _confidence(est, X_eval, score),
                                                    label_names, k=n_wrong),
        })

    # 3. parameter transfer: LP-FT from the same store, judged on the same held-out images
    model_path = out / "models" / "finetuned.keras"
    finetuned = ft.finetune(image_set, model_path, backbone=backbone, weights=weights, image_size=image_size,
                            epochs=epochs, unfreeze=unfreeze, lr=lr, augment=augment, batch_size=batch_size,
                            mixed_precision=mixed_precision, patience=patience, store=store, seed=seed,
                            workers=workers, split_seed=split_seed)
    evaluation = ft.evaluate(model_path, store, split=split, batch_size=batch_size, workers=workers,
                             n_wrong=n_wrong)
    fm_metrics = {k: evaluation[k] for k in ("n", "labels", "accuracy", "balanced_accuracy", "precision",
                                             "recall", "f1", "roc_auc", "per_class", "confusion_matrix")}
    s = finetuned.settings
    models.append({
        "name": "lp-ft", "kind": "fine-tune",
        "description": (f"LP-FT: head from the L2 logistic-regression probe, top {s['unfreeze']} blocks "
                        f"unfrozen, Adam lr {s['lr']:g}, {len(finetuned.history['epoch']) - 1} epochs run, "
                        f"kept epoch {finetuned.best_epoch}, augment {','.join(s['augment']) or 'none'}"),
        "metrics": fm_metrics, "train_seconds": finetuned.seconds,
        "inference_seconds": evaluation["inference_seconds"],
        "inference_images_per_second": evaluation["n"] / evaluation["inference_seconds"],
        "model_bytes": model_path.stat().st_size, "model_path": f"models/{model_path.name}", "cv_score": None,
        "wrong": evaluation["wrong"],
    })
    if evaluation["n"] != len(X_eval):
        log.warning("fine-tuned model evaluated on %d images, feature transfer on %d", evaluation["n"],
                    len(X_eval))

    notes = []
    if random_weights:
        notes.append("The backbone has RANDOM weights (--weights none): these numbers say nothing about "
                     "pretrained transfer.")
    for c in summary.label_conflicts:
        notes.append(f"Identical content under different labels {c['labels']}: {', '.join(c['paths'])} "
                     "(label noise).")
    notes.append("Inference time of feature-transfer models counts the linear model only; add the extraction "
                 f"time per image ({summary.seconds / max(1, summary.n_extracted + summary.n_cached):.4f} s "
                 "here) for new images. The fine-tuned model's inference time includes decoding and the CNN.")
    notes.append(f"The fine-tuned model was selected on {finetuned.n_monitor} images held out from the train "
                 f"split; the {split} split was used only for the numbers in this report.")
    report = {
        "title": f"featx compare: {Path(os.fspath(data)).name}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"source": str(Path(os.fspath(data)).resolve()), "label_names": label_names,
                 "splits": summary.splits, "eval_split": split},
        "backbone": {"name": fingerprint["backbone"], "weights": fingerprint["weights"],
                     "image_size": fingerprint["image_size"], "fingerprint_id": fid, "random_weights": random_weights},
        "versions": {**versions(), "backend": backend_name()},
        "extraction": {"seconds": summary.seconds, "images": summary.n_extracted,
                       "images_per_second": summary.images_per_second, "cached": summary.n_cached},
        "models": models,
        "finetune": {
            "history": finetuned.history, "best_epoch": finetuned.best_epoch, "settings": finetuned.settings,
            "probe": finetuned.probe, "unfrozen_blocks": finetuned.unfrozen_blocks, "timings": finetuned.timings},
        "embedding": embedding_2d(X_eval, y_eval, seed=seed),
        "skipped": [{k: s[k] for k in ("path", "kind", "reason")} for s in store_skipped],
        "notes": notes,
    }
    files = write_report(report, out)
    import json

    written = json.loads(Path(files["json"]).read_text())
    return CompareResult(str(out), files, written.get("verdict", {}), written)
