"""Grid search over backbone configurations and C, with features cached across folds and runs.

    python examples/grid_search.py [DATA]   # DATA: class folders; default: sklearn's digits as PNGs

A scikit-learn Pipeline (FeatureExtractor → StandardScaler → LogisticRegression) is grid-searched
over the pooling, the input size and C. With ``cache=`` pointing at a folder, each backbone
configuration gets its own content-addressed store, so the CNN runs once per image and
configuration however many folds and candidates there are — and not at all on a second run.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _data import image_folder, workdir
from featx.sklearn import FeatureExtractor
from featx.sources import from_directory


def main(argv: list[str]) -> int:
    image_set = from_directory(image_folder(argv))
    # a few images per class keep the example quick on a laptop
    per_class: dict[str, list] = {}
    for item in image_set.items:
        per_class.setdefault(item.label, []).append(item.path)
    paths = [p for files in per_class.values() for p in files[:30]]
    labels = [label for label, files in per_class.items() for _ in files[:30]]
    X_train, X_test, y_train, y_test = train_test_split(paths, labels, test_size=0.25, stratify=labels,
                                                        random_state=0)
    pipe = make_pipeline(
        FeatureExtractor(backbone="mobilenet_0.25", cache=str(workdir() / "feature_cache")),
        StandardScaler(),
        LogisticRegression(max_iter=5000),
    )
    grid = {
        "featureextractor__pooling": ["avg", "max"],
        "featureextractor__image_size": [96, 160],
        "logisticregression__C": [0.01, 0.1, 1.0],
    }
    start = time.perf_counter()
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X_train, y_train)
    print(f"grid search over {len(search.cv_results_['params'])} candidates × 3 folds "
          f"in {time.perf_counter() - start:.1f} s")
    order = np.argsort(search.cv_results_["rank_test_score"])
    for i in order[:5]:
        print(f"  {search.cv_results_['mean_test_score'][i]:.3f}  {search.cv_results_['params'][i]}")
    print(f"best: {search.best_params_}")
    print(f"held-out accuracy: {search.score(X_test, y_test):.3f} on {len(X_test)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
