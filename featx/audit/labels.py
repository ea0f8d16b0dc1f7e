"""Likely label errors by confident learning on out-of-fold probabilities of a linear probe.

Out-of-fold probabilities: every labelled row is scored by a probe that did not see it. Up to
``IN_MEMORY_FLOATS`` feature values the probe is featx's L2 logistic regression
(:func:`featx.linear.train` chooses C by stratified CV, then ``cross_val_predict`` on the same
folds). Above that the rows stay on disk and the probe is linear discriminant analysis fitted on the
other half of the rows (:func:`featx.audit.outliers.class_distances`, which the outlier score needs
anyway): streaming, O(d^2) memory. featx.linear.sgd's out-of-core SGD was the first choice; at
10^6 rows x 1280 x 50 classes it read each fold's scattered rows through h5py point selection and
fitted 50 one-vs-rest models per 128-row step, over an hour on 2 cores.

Confident learning (Northcutt, Jiang & Chuang, JAIR 2021), the rule cleanlab's
``find_label_issues(filter_by="confident_learning")`` applies, written out here because it is a
dozen lines of numpy (cleanlab would add pandas and its own import cost to ``featx audit``; the
benchmark compares the two, benchmarks/README.md):

1. per class j, the threshold t_j = mean of p(j) over the rows labelled j (the probe's average
   self-confidence on that class);
2. a row labelled i is *confidently* of class j when p(j) >= t_j; among such classes the one of
   highest p(j) is its likely true class;
3. rows whose likely true class is not their given label are label issues, ranked by
   self-confidence p(given) ascending (score = 1 - p(given)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featx.audit.findings import AuditError, LabelIssue

if TYPE_CHECKING:
    from featx.store import FeatureStore

IN_MEMORY_FLOATS = 1 << 26  # 256 MiB of float32 features: above, the probe reads from disk
# C grid of the probe: featx.linear's default grid up to 1. Larger C fits separable CNN features
# to near-certain probabilities (nothing left for confident learning to rank) and takes lbfgs 10x
# longer: 30 s instead of 3 s for 52 test photos on 2 cores.
PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def fits_in_memory(store: FeatureStore) -> bool:
    """Whether the labelled rows' features are small enough for the in-memory logistic probe."""
    return int((store.y >= 0).sum()) * store.feature_dim <= IN_MEMORY_FLOATS


def out_of_fold_probabilities(store: FeatureStore, rows: np.ndarray, y: np.ndarray, *, cv: int,
                              seed: int) -> np.ndarray:
    """(len(rows), n_classes) out-of-fold probabilities of featx's L2 logistic regression, columns =
    classes 0..n_classes-1 of ``store.label_names`` (classes without a labelled row get 0)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    from featx.linear import train

    X = store.features(rows)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    # One BLAS thread: these fits are small, and on a busy machine threaded BLAS spins on the shared
    # cores (52 photos x 256 features: 86 s with the default threads, 6.4 s with one, on 2 busy cores).
    with threadpool_limits(1):
        chosen = train(X, y, classifier="logreg", penalty="l2", cv=cv, Cs=PROBE_CS, random_state=seed)
        proba = cross_val_predict(clone(chosen.estimator), X, y, cv=folds, method="predict_proba")
    full = np.zeros((len(rows), len(store.label_names)), np.float64)
    full[:, np.unique(y)] = proba
    return full


def confident_issues(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Positions of the label issues by the confident-learning rule, most suspicious first."""
    n, n_classes = proba.shape
    thresholds = np.full(n_classes, np.inf)
    for j in np.unique(y):
        thresholds[j] = proba[y == j, j].mean()
    confident = proba >= thresholds  # row is confidently of class j
    likely = np.where(confident, proba, -1.0).argmax(axis=1)
    has_any = confident.any(axis=1)
    flagged = np.flatnonzero(has_any & (likely != y))
    self_confidence = proba[np.arange(n), y]
    return flagged[np.argsort(self_confidence[flagged], kind="stable")]


def check_labels(store: FeatureStore, y: np.ndarray, cv: int) -> int:
    """The folds to use; AuditError when the labels cannot support a probe."""
    names = store.label_names
    labelled = y >= 0
    if not labelled.any():
        raise AuditError(f"store {store.path} has no labelled rows (extracted from a list of paths?); "
                         "label errors need class labels: extract from class folders or a CSV with a label column")
    classes, counts = np.unique(y[labelled], return_counts=True)
    if classes.size < 2:
        raise AuditError(f"store {store.path} has one class only ({names[classes[0]]!r}): a probe that "
                         "checks labels needs at least 2 classes")
    if counts.min() < 2:
        small = [names[c] for c, n in zip(classes, counts) if n < 2]
        raise AuditError(f"class {small[0]!r} of store {store.path} has 1 labelled image; cross-validation needs "
                         f"at least 2 per class ({len(small)} such classes)")
    return int(min(cv, counts.min()))


# Below this out-of-fold accuracy the probe's doubts say more about the features than the labels: on
# flowers5 (benchmarks/README.md, "Auditing") a probe right on 65-74 % of the rows put only 37-52 % of
# planted label errors in its top k; the audit then says so in its notes.
TRUSTED_PROBE_ACCURACY = 0.85


def find_label_issues(store: FeatureStore, *, cv: int = 5, seed: int = 0,
                      proba: np.ndarray | None = None) -> tuple[list[LabelIssue], float]:
    """(label issues among the labelled rows of `store`, most suspicious first; the probe's out-of-fold
    accuracy against the given labels). `proba` (all rows x classes, out-of-fold) replaces the
    logistic probe, for stores too large for memory."""
    y_all = store.y
    folds = check_labels(store, y_all, cv)
    rows = np.flatnonzero(y_all >= 0)
    y = y_all[rows]
    if proba is None:
        proba = out_of_fold_probabilities(store, rows, y, cv=folds, seed=seed)
    else:
        proba = proba[rows]
    names, paths, splits = store.label_names, store.paths, store.splits
    accuracy = float((proba.argmax(axis=1) == y).mean())
    issues = []
    for pos in confident_issues(proba, y):
        r, suggested = int(rows[pos]), int(proba[pos].argmax())
        issues.append(LabelIssue(row=r, path=str(paths[r]), split=str(splits[r]), given=names[y[pos]],
                                 suggested=names[suggested], score=float(1 - proba[pos, y[pos]]),
                                 p_given=float(proba[pos, y[pos]]), p_suggested=float(proba[pos, suggested])))
    return issues, accuracy
