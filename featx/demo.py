"""`featx demo`: the whole feature-transfer path, offline, on scikit-learn's bundled digits.

The 1,797 8×8 digit images are written as real PNG files in class folders, then extracted with the
vendored MobileNet α=0.25 (real ImageNet weights), and every linear classifier is trained on the
train split and measured on the held-out validation split.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from featx.backbones import VENDORED_BACKBONE


def write_digits(folder: str | os.PathLike) -> Path:
    """Write sklearn's digits as PNG files ``folder/<digit>/<index>.png`` (idempotent)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = Path(folder)
    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        path = folder / str(target) / f"digit_{i:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0..16 ink levels → 8-bit grey, dark ink on white paper like a scanned digit
        pixels = (255 - np.round(image * 255 / 16)).astype(np.uint8)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
        os.replace(tmp, path)
    return folder


def run_demo(workdir: str | os.PathLike = "cache/demo", *, progress: bool = True) -> int:
    from featx.classify import evaluate_store, train_store
    from featx.extract import extract
    from featx.metrics import format_report, format_table, save_confusion_png
    from featx.store import FeatureStore

    workdir = Path(workdir)
    started = time.perf_counter()
    data = write_digits(workdir / "digits")
    store = workdir / "digits_mobilenet_0.25.h5"
    print(f"[1/3] extract  {data} → {store}  (backbone {VENDORED_BACKBONE}, vendored ImageNet weights)")
    summary = extract(data, store, backbone=VENDORED_BACKBONE, weights="imagenet", batch_size=64,
                      validation_fraction=0.25, progress=progress)
    print(summary.format())

    model = workdir / "digits_best.skops"
    print("\n[2/3] train    logistic regression and linear SVM, L1 and L2, C by 3-fold CV on train")
    report = train_store(store, model, classifier="all", penalty="all", cv=3, n_jobs=-1)

    # Every candidate (refit at its chosen C) on the held-out split, side by side.
    with FeatureStore(store) as fs:
        X_val, y_val = fs.split("validation")
    rows = [{**c, "validation_accuracy": float((report.result.estimators[f"{c['classifier']}-{c['penalty']}"]
                                               .predict(X_val) == y_val).mean())}
            for c in report.candidates]
    print(format_table(rows, ["classifier", "penalty", "best_C", "cv_score_mean", "validation_accuracy",
                              "n_nonzero_weights", "fit_seconds"]))

    print(f"\n[3/3] evaluate {report.name} (best by CV) on the validation split")
    result = evaluate_store(model, store, split="validation")
    png = workdir / "digits_best.validation.confusion.png"
    save_confusion_png(result, png, title=f"{report.name} on validation")
    print(format_report(result))
    print(f"\nconfusion matrix → {png}\nclassifier → {model}\nstore → {store}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
