"""Extract once, experiment many times: several classifiers on one cached feature store.

    python examples/cached_store.py [DATA]   # DATA: class folders; default: sklearn's digits as PNGs

The CNN runs once (`featx.extract` into an HDF5 store; a rerun computes nothing); every
experiment after that reads the store: in-memory logistic regression and linear SVM over C, and
an out-of-core SGD classifier trained chunk by chunk (memory bounded by the chunk).
"""

from __future__ import annotations

import sys
import time

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from _data import image_folder, workdir
from featx.extract import extract
from featx.linear import train_sgd
from featx.store import FeatureStore


def main(argv: list[str]) -> int:
    store = workdir() / "cached_store_example.h5"
    summary = extract(image_folder(argv), store, backbone="mobilenet_0.25", image_size=128, progress=False)
    print(f"store: {summary.n_extracted} extracted, {summary.n_cached} already cached, "
          f"{summary.n_skipped} skipped → {store}")
    with FeatureStore(store) as fs:
        X_train, y_train = fs.split("train")
        X_val, y_val = fs.split("validation")
        print(f"{len(X_train)} train / {len(X_val)} validation rows, {fs.feature_dim} features, "
              f"classes {fs.label_names}")
        frame = fs.to_pandas(split="validation")
        print(f"as a DataFrame: {frame.shape[0]} rows × {frame.shape[1]} columns "
              f"({', '.join(frame.columns[:4])}, …)")
    experiments = {
        f"logreg C={C}": make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        for C in (0.01, 0.1, 1.0)
    } | {
        f"linear SVM C={C}": make_pipeline(StandardScaler(), LinearSVC(C=C, dual=False))
        for C in (0.001, 0.01)
    }
    for name, model in experiments.items():
        start = time.perf_counter()
        accuracy = model.fit(X_train, y_train).score(X_val, y_val)
        print(f"  {name:22s} validation accuracy {accuracy:.3f}  ({time.perf_counter() - start:.2f} s)")
    start = time.perf_counter()
    sgd = train_sgd(store, loss="hinge", penalty="l2", chunk_size=256)
    print(f"  {'SGD hinge, out-of-core':22s} validation accuracy {sgd.score(X_val, y_val):.3f}  "
          f"({time.perf_counter() - start:.2f} s, chunks of 256 rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
