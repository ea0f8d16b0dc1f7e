"""A quick image classifier on a laptop CPU, from a folder of class folders, in three calls.

    python examples/laptop_classifier.py [DATA] [IMAGE ...]

extract (features of every image, cached, resumable) → train (logistic regression and linear
SVM, L1 and L2, C by cross-validation on the train split) → evaluate on the held-out split, then
predict the class of a few images with the saved classifier.
"""

from __future__ import annotations

import sys

from _data import image_folder, workdir
from featx.classify import evaluate_store, predict_images, train_store
from featx.extract import extract
from featx.metrics import format_report, format_table


def main(argv: list[str]) -> int:
    data = image_folder(argv[:2])
    store, model = workdir() / "laptop.h5", workdir() / "laptop.skops"
    print(extract(data, store, backbone="mobilenet_0.25", progress=False).format())
    report = train_store(store, model, classifier="all", penalty="all", cv=3)
    print(format_table(report.candidates, ["classifier", "penalty", "best_C", "cv_score_mean", "fit_seconds"]))
    print(format_report(evaluate_store(model, store, split="validation"), title=f"{report.name} on validation"))
    images = argv[2:] or [str(p) for p in sorted(data.rglob("*.png"))[:3] + sorted(data.rglob("*.jpg"))[:3]]
    for p in predict_images(model, images)["predictions"]:
        confidence = f" ({p['confidence']:.2f})" if "confidence" in p else ""  # SVMs give no probability
        print(f"predicted {p['label']:>12s}{confidence}  {p['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
