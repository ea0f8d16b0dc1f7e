"""Out-of-core linear classifiers: averaged SGD straight from a feature store, a chunk of rows at a time.

:func:`train_sgd` trains one model on a split too large to load; :func:`search_sgd` chooses its loss,
penalty and ``alpha`` on a held-out part of the split (``_holdout_rows``), running the candidates
through joblib (locally or on a Dask cluster), and refits the best on the whole split.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featx.linear._checks import _check_choice, _check_class_weight, _class_name
from featx.sources import seeded_rank

if TYPE_CHECKING:
    from featx.store import FeatureStore

__all__ = [
    "SGD_LOSSES",
    "SGD_PENALTIES",
    "DEFAULT_SGD_ALPHAS",
    "SGDSearchResult",
    "train_sgd",
    "search_sgd",
]

SGD_LOSSES = ("hinge", "log_loss")
SGD_PENALTIES = ("l1", "l2", "elasticnet")

# How train_sgd visits the rows and what it returns. Measured on sklearn's
# digits (1,078 train / 719 validation rows) and breast cancer (284 / 285),
# stored sorted by class, and on MobileNet-0.25 features (256-d, 128 px) of
# the 4,317 flowers5 photos (3,022 / 1,295), alpha=1e-4, 5 epochs, mean of
# 5-10 seeds.
#
# Order. featx stores hold one class folder after another, so contiguous
# chunks are nearly single-class, and shuffling only the order of whole chunks
# leaves SGD with long runs of one class: on the flower features, plain SGD
# fell from 61-62% (in memory, fully shuffled) to 52-60% with contiguous 128-
# and 1024-row chunks, and averaged SGD lost 0.6-2.3 points. So each epoch
# shuffles the split in blocks of chunk_size // 32 rows, and a chunk is 32
# random blocks (its rows shuffled again in memory); the chunked models then
# match the in-memory ones (below). Blocks keep the reads local: a block of a
# 4096-row chunk is 128 rows, 1 MiB of 2048-d float32 features.
_BLOCKS_PER_CHUNK = 32

# Averaging. Averaged SGD (the mean of the iterates rather than the last
# one) gained 2-5 points on the flower features (L2: 61% -> 65.5-66%; seed
# spread 1.0-1.4 -> 0.3-0.9 points), 0.6-0.9 on breast cancer and nothing
# (+-0.3) on digits. SGDClassifier(average=True) cannot be trained with
# partial_fit in sklearn 1.9: it does not carry its intercept from one call to
# the next (the non-averaged intercept of a multi-class model stays at its
# value after the first call, that of a binary model at 0), which cost 2.3-2.5
# points on digits with 32-row calls. So train_sgd runs plain SGD, whose
# partial_fit is sound, and averages coef_ and intercept_ itself after every
# step of n // 16 rows (at least 16, at most 128; each partial_fit call costs
# 5-10 ms of overhead). The result is within 0.7 points (mean over seeds) of
# SGDClassifier(average=True).fit in memory on all three data sets, for chunk
# sizes 32 to 4096 (within 0.3 on digits).
_AVERAGE_STEPS_PER_EPOCH = 16
_AVERAGE_STEP_RANGE = (16, 128)

# learning_rate="optimal" (eta = 1 / (alpha * (t + t0))) depends only on the
# update count t_, which partial_fit carries across calls, so the chunked run
# follows the schedule of one in-memory fit(). ("adaptive" lowers eta only
# when an epoch inside one fit() call stops improving; partial_fit runs one
# epoch per call, so there it is a constant eta0 that needs tuning.)
_SGD_SETTINGS: dict[str, Any] = {"learning_rate": "optimal"}


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def _check_alpha(alpha: Any) -> float:
    alpha = _check_number(alpha, "alpha")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    return alpha


def _check_sgd_options(l1_ratio: Any, chunk_size: Any, epochs: Any, random_state: Any,
                       class_weight: Any) -> tuple[float, int, int, int]:
    """The options every out-of-core SGD fit shares, checked once for train_sgd and search_sgd."""
    l1_ratio = _check_number(l1_ratio, "l1_ratio")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be between 0 and 1, got {l1_ratio!r}")
    _check_class_weight(class_weight)
    return (l1_ratio, _check_int(chunk_size, "chunk_size", 1), _check_int(epochs, "epochs", 1),
            _check_int(random_state, "random_state", 0))


def train_sgd(
    store: str | os.PathLike | FeatureStore,
    *,
    loss: str = "hinge",
    penalty: str = "l2",
    alpha: float = 1e-4,
    l1_ratio: float = 0.15,
    split: str = "train",
    chunk_size: int = 4096,
    epochs: int = 5,
    class_weight: str | dict | None = None,
    random_state: int = 0,
    label_names: list[str] | None = None,
) -> Pipeline:
    """Train a linear classifier by averaged SGD on one split of a store, chunk by chunk.

    At most ``chunk_size`` rows of features are in memory at once (besides the
    labels and row numbers of the split), so the split may be larger than RAM.
    Pass 1 fits a ``StandardScaler`` with ``partial_fit``; each of the
    ``epochs`` passes after it feeds the split to ``SGDClassifier.partial_fit``
    in chunks of random blocks of rows, shuffled again within each chunk, so
    that class-sorted stores are still seen in a mixed order. The order is a
    function of ``random_state`` alone. Unlabelled rows (label -1) are skipped.

    The classifier's ``coef_`` and ``intercept_`` are the average of the SGD
    iterates over all epochs (averaged SGD), which is computed here rather than
    by ``SGDClassifier(average=True)``; see the notes above
    ``_AVERAGE_STEPS_PER_EPOCH``. With ``penalty="l1"`` the average is not sparse.

    Parameters
    ----------
    store : path or FeatureStore
        The store to read; a path is opened and closed here, an open
        :class:`~featx.store.FeatureStore` is left open.
    loss : {"hinge", "log_loss"}
        Linear SVM or logistic regression (the latter has ``predict_proba``).
        More than two classes are fit one-vs-rest.
    penalty : {"l1", "l2", "elasticnet"}
        Regularisation; ``elasticnet`` mixes L1 and L2 by ``l1_ratio``.
    alpha : float
        Regularisation strength (larger is stronger; roughly ``1 / (C * n)``).
    l1_ratio : float in [0, 1]
        L1 share of the elastic-net penalty (used with ``elasticnet`` only).
    split : {"train", "validation", "test"}
        Rows to train on.
    chunk_size : int
        Rows read and trained on at a time.
    epochs : int
        SGD passes over the split (the scaler's pass comes on top).
    class_weight : None, "balanced" or dict
        ``"balanced"`` weighs class ``c`` by ``n / (n_classes * n_c)`` from the
        label counts of the whole split, and reaches the classifier as a dict.
    random_state : int
        Seed of the row order and of the classifier.
    label_names : list of str, optional
        Names of the classes in error messages (default: the store's).

    Returns
    -------
    Pipeline
        Fitted steps ``"scale"`` (StandardScaler) and ``"clf"``
        (SGDClassifier), used like :func:`featx.linear.cv.make_pipeline`'s and
        saved with :func:`featx.linear.files.save_classifier`.
    """
    from featx.store import FeatureStore

    _check_choice(loss, SGD_LOSSES, "loss")
    _check_choice(penalty, SGD_PENALTIES, "penalty")
    alpha = _check_alpha(alpha)
    l1_ratio, chunk_size, epochs, random_state = _check_sgd_options(l1_ratio, chunk_size, epochs, random_state,
                                                                     class_weight)
    options = dict(loss=loss, penalty=penalty, alpha=alpha, l1_ratio=l1_ratio, split=split,
                   chunk_size=chunk_size, epochs=epochs, class_weight=class_weight,
                   random_state=random_state, label_names=label_names)
    if isinstance(store, FeatureStore):
        return _train_sgd(store, **options)
    if not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"store must be a path or a FeatureStore, got {type(store).__name__}")
    with FeatureStore(store) as opened:
        return _train_sgd(opened, **options)


def _train_sgd(
    store: FeatureStore, *, loss: str, penalty: str, alpha: float, l1_ratio: float, split: str,
    chunk_size: int, epochs: int, class_weight: str | dict | None, random_state: int,
    label_names: list[str] | None, rows: np.ndarray | None = None,
) -> Pipeline:
    """`rows`, when given, are the store rows to train on (a part of `split`, for search_sgd)."""
    if label_names is None:
        label_names = store.label_names
    index, y, classes, counts = _labelled_rows(store, split, rows, label_names)
    class_weight = _sgd_class_weight(class_weight, classes, counts, split)
    scaler = _fit_scaler(store, index, split, chunk_size)
    clf = SGDClassifier(
        loss=loss,
        penalty=penalty,
        alpha=alpha,
        l1_ratio=l1_ratio,
        class_weight=class_weight,
        random_state=random_state,
        max_iter=epochs,
        tol=None,
        **_SGD_SETTINGS,
    )
    _averaged_sgd(clf, store, index, y, classes, scaler, chunk_size, epochs, np.random.default_rng(random_state))
    return Pipeline([("scale", scaler), ("clf", clf)])


def _labelled_rows(
    store: FeatureStore, split: str, rows: np.ndarray | None, label_names: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The labelled store rows to train on (ascending), their labels, the classes and their counts."""
    labels = store.y  # one int per row; the features stay on disk
    index = store.split_index(split) if rows is None else np.sort(np.asarray(rows, np.int64))
    index = index[labels[index] >= 0]
    y = labels[index]
    if index.size == 0:
        raise ValueError(f"split {split!r} of {store.path} has no labelled rows to train on")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(
            f"need at least 2 classes to train a classifier, but split {split!r} of "
            f"{store.path} has only class {_class_name(classes[0], label_names)}"
        )
    return index, y, classes, counts


def _sgd_class_weight(
    class_weight: str | dict | None, classes: np.ndarray, counts: np.ndarray, split: str
) -> dict | None:
    """class_weight as the dict partial_fit accepts: "balanced" from the whole split's counts."""
    if class_weight == "balanced":
        # partial_fit refuses "balanced" (it would only see one chunk's counts)
        n = int(counts.sum())
        return {int(c): float(n / (classes.size * k)) for c, k in zip(classes, counts)}
    if isinstance(class_weight, dict):
        present = set(classes.tolist())
        unknown = [k for k in class_weight if k not in present]
        if unknown:
            raise ValueError(
                f"class_weight names classes that split {split!r} does not have: "
                f"{unknown}; its classes are {classes.tolist()}"
            )
        return {int(c): float(w) for c, w in class_weight.items()}
    return class_weight


def _fit_scaler(store: FeatureStore, index: np.ndarray, split: str, chunk_size: int) -> StandardScaler:
    """Pass 1: the scaler, over contiguous chunks (and a check that every feature is finite)."""
    scaler = StandardScaler()
    for start in range(0, int(index.size), chunk_size):
        rows = index[start:start + chunk_size]
        X = store.features(rows)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            bad = int(rows[np.argmin(finite)])
            raise ValueError(
                f"split {split!r} has NaN or infinite features in {int((~finite).sum())} rows of "
                f"one chunk, the first {store.paths[bad]!r} (store row {bad}); re-extract them"
            )
        scaler.partial_fit(X)
    return scaler


def _averaged_sgd(
    clf: SGDClassifier, store: FeatureStore, index: np.ndarray, y: np.ndarray, classes: np.ndarray,
    scaler: StandardScaler, chunk_size: int, epochs: int, rng: np.random.Generator,
) -> None:
    """Passes 2..epochs+1: SGD over random blocks; `clf` ends with the average of its iterates."""
    n = int(index.size)
    block = max(1, chunk_size // _BLOCKS_PER_CHUNK)
    per_chunk = chunk_size // block
    block_starts = np.arange(0, n, block)
    lo, hi = _AVERAGE_STEP_RANGE
    step = min(hi, max(lo, n // _AVERAGE_STEPS_PER_EPOCH))
    coef_sum = intercept_sum = None
    seen = 0
    for _ in range(epochs):
        order = rng.permutation(block_starts)
        for first in range(0, order.size, per_chunk):
            starts = np.sort(order[first:first + per_chunk])
            pos = (starts[:, None] + np.arange(block)).ravel()
            pos = pos[pos < n]  # ascending: the store reads its rows in disk order
            X = store.features(index[pos])
            shuffle = rng.permutation(pos.size)
            # float64: the scaled chunk is what SGD trains on, and averaging
            # millions of updates in float32 would lose digits
            X = scaler.transform(X[shuffle].astype(np.float64))
            y_chunk = y[pos[shuffle]]
            for s in range(0, pos.size, step):
                k = min(step, pos.size - s)
                clf.partial_fit(X[s:s + k], y_chunk[s:s + k], classes=classes)
                seen += k
                if coef_sum is None:
                    coef_sum, intercept_sum = clf.coef_ * k, clf.intercept_ * k
                else:
                    coef_sum += clf.coef_ * k
                    intercept_sum += clf.intercept_ * k
    clf.coef_ = coef_sum / seen
    clf.intercept_ = intercept_sum / seen


# The regularisation grid of search_sgd. alpha is roughly 1 / (C * n): over
# 10^3-10^7 training rows these span C = 1e-5 ... 1e3, which covers the CV
# search's own grid (featx.linear.cv.DEFAULT_CS, 1e-4 ... 1e2) at every size.
DEFAULT_SGD_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class SGDSearchResult:
    """The refitted best candidate of :func:`search_sgd` and every candidate's held-out score."""

    estimator: Pipeline
    name: str  # "sgd-<loss>-<penalty>"
    loss: str
    penalty: str
    alpha: float
    candidates: list[dict]  # loss, penalty, alpha, holdout_accuracy, fit_seconds, pid, host
    n_train: int  # labelled rows of the split (the final fit)
    n_fit: int  # rows the candidates were fitted on
    n_holdout: int  # rows they were scored on


def _holdout_rows(store: FeatureStore, split: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the labelled rows of `split` into (fit, holdout), stratified per class, by a seeded hash of each
    row's path (:func:`featx.sources.seeded_rank`, as for the store's own splits): the same rows whatever the
    store's row order, and never the validation or test split."""
    labels = store.y
    index = store.split_index(split)
    index = index[labels[index] >= 0]
    paths = store.paths
    holdout: list[int] = []
    for c in np.unique(labels[index]):
        rows = index[labels[index] == c]
        ranked = sorted(rows.tolist(), key=lambda r: seeded_rank(paths[r], seed))
        k = int(round(len(rows) * fraction))
        k = min(max(k, 1 if len(rows) >= 2 else 0), len(rows) - 1)  # every class on both sides when it can be
        holdout += ranked[:k]
    held = np.array(sorted(holdout), np.int64)
    return np.setdiff1d(index, held), held


def _sgd_candidate(
    store: str, fit_rows: np.ndarray, holdout_rows: np.ndarray, *, loss: str, penalty: str, alpha: float,
    l1_ratio: float, split: str, chunk_size: int, epochs: int, class_weight: str | dict | None, random_state: int,
) -> dict:
    """Fit one candidate on `fit_rows` and score it on `holdout_rows`, chunk by chunk (a joblib task: it opens
    the store itself, so it runs in another process or on a Dask worker that sees the same path)."""
    import socket

    from featx.store import FeatureStore

    started = time.perf_counter()
    with FeatureStore(store) as fs:
        pipe = _train_sgd(fs, loss=loss, penalty=penalty, alpha=alpha, l1_ratio=l1_ratio, split=split,
                          chunk_size=chunk_size, epochs=epochs, class_weight=class_weight,
                          random_state=random_state, label_names=None, rows=fit_rows)
        y = fs.y
        correct = 0
        for start in range(0, len(holdout_rows), chunk_size):
            rows = holdout_rows[start:start + chunk_size]
            correct += int((pipe.predict(fs.features(rows)) == y[rows]).sum())
    return {"loss": loss, "penalty": penalty, "alpha": alpha,
            "holdout_accuracy": correct / len(holdout_rows) if len(holdout_rows) else float("nan"),
            "fit_seconds": time.perf_counter() - started, "pid": os.getpid(), "host": socket.gethostname()}


def search_sgd(
    store: str | os.PathLike | FeatureStore,
    *,
    losses: tuple[str, ...] | list[str] = ("hinge",),
    penalties: tuple[str, ...] | list[str] = ("l2",),
    alphas: tuple[float, ...] | list[float] | None = None,
    l1_ratio: float = 0.15,
    split: str = "train",
    holdout_fraction: float = 0.2,
    chunk_size: int = 4096,
    epochs: int = 5,
    class_weight: str | dict | None = None,
    random_state: int = 0,
    n_jobs: int | None = None,
) -> SGDSearchResult:
    """Choose loss, penalty and ``alpha`` of :func:`train_sgd` out of core, then refit on the whole split.

    Every combination of `losses` x `penalties` x `alphas` (default :data:`DEFAULT_SGD_ALPHAS`) is
    fitted with :func:`train_sgd`'s chunked averaged SGD on the `split` minus a held-out
    `holdout_fraction` (stratified, by a seeded hash of the path) and scored by accuracy on that
    held-out part; validation and test rows are never used. Ties go to the stronger regularisation.
    Candidates run through joblib with `n_jobs` workers: wrap the call in
    ``joblib.parallel_config(backend="dask")`` to run them on a Dask cluster (each task opens the store
    by its path). Memory: a chunk of rows per running candidate.
    """
    from joblib import Parallel, delayed

    from featx.store import FeatureStore

    losses, penalties = list(losses), list(penalties)
    if not losses or not penalties:
        raise ValueError("search_sgd needs at least one loss and one penalty")
    for loss in losses:
        _check_choice(loss, SGD_LOSSES, "loss")
    for penalty in penalties:
        _check_choice(penalty, SGD_PENALTIES, "penalty")
    alphas = [_check_number(a, "alpha") for a in (DEFAULT_SGD_ALPHAS if alphas is None else alphas)]
    if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
        raise ValueError(f"alphas must be positive finite numbers, got {alphas!r}")
    holdout_fraction = _check_number(holdout_fraction, "holdout_fraction")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction!r}")
    l1_ratio, chunk_size, epochs, random_state = _check_sgd_options(l1_ratio, chunk_size, epochs, random_state,
                                                                     class_weight)
    path = str(store.path if isinstance(store, FeatureStore) else store)
    with FeatureStore(path) as fs:
        fit_rows, holdout_rows = _holdout_rows(fs, split, holdout_fraction, random_state)
        if len(np.unique(fs.y[fit_rows])) < 2:
            raise ValueError(f"split {split!r} of {path} has fewer than 2 classes to train on")
    options = dict(l1_ratio=l1_ratio, split=split, chunk_size=chunk_size, epochs=epochs,
                   class_weight=class_weight, random_state=random_state)
    grid = [(loss, penalty, alpha) for loss in losses for penalty in penalties for alpha in alphas]
    candidates = Parallel(n_jobs=n_jobs)(
        delayed(_sgd_candidate)(path, fit_rows, holdout_rows, loss=loss, penalty=penalty, alpha=alpha, **options)
        for loss, penalty, alpha in grid)
    best = max(candidates, key=lambda c: (c["holdout_accuracy"], c["alpha"]))
    with FeatureStore(path) as fs:
        estimator = _train_sgd(fs, loss=best["loss"], penalty=best["penalty"], alpha=best["alpha"],
                               label_names=None, **options)
        n_train = int((fs.y[fs.split_index(split)] >= 0).sum())
    return SGDSearchResult(estimator, f"sgd-{best['loss']}-{best['penalty']}", best["loss"], best["penalty"],
                           best["alpha"], list(candidates), n_train, len(fit_rows), len(holdout_rows))
