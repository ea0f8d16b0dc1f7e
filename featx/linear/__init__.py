"""Linear classifiers on cached CNN features.

Every candidate (classifier x penalty) is tuned over a log grid of ``C`` by
stratified cross-validation on the training rows only; the best candidate is
refit on all training rows. :func:`train_sgd` instead trains one linear model
by averaged SGD straight from a feature store, a chunk of rows at a time, for
splits too large to load. Classifiers are saved with :mod:`skops.io` and
loaded back only after every type named in the file has been checked against
:data:`TRUSTED_TYPES`, so opening a classifier file never runs code from it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import secrets
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import get_scorer, get_scorer_names
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from featx.errors import InputNotFound

if TYPE_CHECKING:
    from featx.store import FeatureStore

__all__ = [
    "CLASSIFIERS",
    "PENALTIES",
    "DEFAULT_CS",
    "DEFAULT_MAX_ITER",
    "TRUSTED_TYPES",
    "CandidateResult",
    "TrainResult",
    "SavedClassifier",
    "ModelFileError",
    "UnsafeModelError",
    "FingerprintMismatch",
    "make_pipeline",
    "train",
    "SGD_LOSSES",
    "SGD_PENALTIES",
    "train_sgd",
    "DEFAULT_SGD_ALPHAS",
    "SGDSearchResult",
    "search_sgd",
    "predict_scores",
    "count_nonzero_weights",
    "save_classifier",
    "load_classifier",
    "check_fingerprint",
]

CLASSIFIERS = ("logreg", "svm")
PENALTIES = ("l1", "l2")
DEFAULT_CS = np.logspace(-4, 2, 7)
DEFAULT_MAX_ITER = 5000

# Folds used by CalibratedClassifierCV to fit the sigmoid map; 3 rather than
# sklearn's 5 so that calibration still works on small classes inside CV.
CALIBRATION_CV = 3

# Solver settings per candidate. Features are standardised inside the
# pipeline, which is what sag/saga and liblinear need to converge well.
# - logreg/l2: lbfgs minimises the true multinomial loss and converges in a
#   few dozen iterations on standardised features, at any C.
# - logreg/l1: saga is the only solver with multinomial L1. liblinear (the
#   other L1 solver) is binary only in sklearn 1.9 and its L1 path stalls for
#   minutes at large C on separable data, which CNN features usually are.
#   tol=1e-3 (relative change of the weights per epoch) keeps fits to a few
#   hundred epochs. On digits, 1e-4 took 3-9x longer for the same held-out
#   accuracy (97-98% identical predictions), though it zeroes a few more
#   small weights; saga's step size shrinks with the largest row norm, which
#   standardised rare features inflate, so tight tolerances are expensive.
# - svm: the primal liblinear solvers (dual=False) are robust at large C,
#   where dual coordinate descent hits max_iter on separable data; L1 needs the
#   primal anyway. tol=1e-2 for L1 is liblinear's own default for that solver
#   (1e-3 makes large-C fits 5-10x slower); L2 is cheap, so it gets 1e-3.
#   liblinear penalises the intercept like a weight; a synthetic feature of 10
#   makes that penalty 100x (L2) / 10x (L1) weaker, closer to the unpenalised
#   intercept of LogisticRegression, and also speeds up convergence.
_SOLVER_SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("logreg", "l2"): {"solver": "lbfgs", "l1_ratio": 0.0, "tol": 1e-4},
    ("logreg", "l1"): {"solver": "saga", "l1_ratio": 1.0, "tol": 1e-3},
    ("svm", "l2"): {"penalty": "l2", "tol": 1e-3, "intercept_scaling": 10.0},
    ("svm", "l1"): {"penalty": "l1", "tol": 1e-2, "intercept_scaling": 10.0},
}

# Tie-breaking order: when two candidates have the same mean CV score, the
# simpler one wins (L2 before L1, logistic regression before SVM).
_PENALTY_RANK = {"l2": 0, "l1": 1}
_CLASSIFIER_RANK = {"logreg": 0, "svm": 1}


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class CandidateResult:
    """One row of the candidate comparison table.

    ``fit_seconds`` is the wall-clock time of the whole candidate search (all
    folds and C values, plus the refit). ``n_nonzero_weights`` counts the
    non-zero entries of the refit model's coefficient matrix.
    """

    classifier: str
    penalty: str
    best_C: float
    cv_score_mean: float
    cv_score_std: float
    fit_seconds: float
    n_nonzero_weights: int

    @property
    def name(self) -> str:
        return f"{self.classifier}-{self.penalty}"


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the refit best pipeline and the comparison table."""

    estimator: Pipeline
    name: str
    candidates: list[CandidateResult]
    scoring: str
    #: every candidate refit at its chosen C, by name (e.g. "svm-l1"), for side-by-side comparisons
    estimators: dict[str, Pipeline] = dataclasses.field(default_factory=dict)

    @property
    def best(self) -> CandidateResult:
        return self.candidates[0]


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


def _check_choice(value: Any, allowed: tuple, what: str) -> None:
    if value not in allowed:
        allowed_txt = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed_txt}")


def _check_class_weight(class_weight: Any) -> None:
    if class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict):
        return
    raise ValueError(
        f"unknown class_weight {class_weight!r}; expected None, 'balanced' "
        "or a dict {class: weight}"
    )


def make_pipeline(
    classifier: str,
    penalty: str,
    *,
    C: float = 1.0,
    class_weight: str | dict | None = None,
    calibrate: bool = False,
    random_state: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    calibration_cv: int = CALIBRATION_CV,
) -> Pipeline:
    """Build an unfitted ``StandardScaler -> linear classifier`` pipeline.

    Parameters
    ----------
    classifier : {"logreg", "svm"}
        Logistic regression (multinomial) or linear SVM (one-vs-rest).
    penalty : {"l1", "l2"}
        Regularisation; L1 gives sparse weights.
    C : float
        Inverse regularisation strength.
    class_weight : None, "balanced" or dict
        Passed to the classifier.
    calibrate : bool
        Wrap the SVM in ``CalibratedClassifierCV`` (sigmoid) so the pipeline
        has ``predict_proba``. Ignored for logistic regression, which has
        ``predict_proba`` already.
    random_state : int
        Seed for the solvers that shuffle (saga).
    max_iter : int
        Iteration cap of the solver.
    calibration_cv : int
        Folds of the calibration cross-validation (``calibrate=True`` only).

    Returns
    -------
    Pipeline
        Steps ``"scale"`` and ``"clf"``; the scaler is fit on whatever rows the
        pipeline is fit on, so inside CV it never sees the validation fold.
    """
    _check_choice(classifier, CLASSIFIERS, "classifier")
    _check_choice(penalty, PENALTIES, "penalty")
    _check_class_weight(class_weight)
    if not (isinstance(C, (int, float, np.floating, np.integer)) and math.isfinite(C) and C > 0):
        raise ValueError(f"C must be a positive finite number, got {C!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")

    settings = dict(_SOLVER_SETTINGS[(classifier, penalty)])
    if classifier == "logreg":
        # l1_ratio, not the `penalty=` argument: sklearn 1.8 deprecated it
        # (removal in 1.10) and passing it raises a FutureWarning.
        est = LogisticRegression(
            C=float(C),
            class_weight=class_weight,
            random_state=random_state,
            max_iter=int(max_iter),
            **settings,
        )
    else:
        est = LinearSVC(
            C=float(C),
            loss="squared_hinge",
            dual=False,
            class_weight=class_weight,
            random_state=random_state,
            max_iter=int(max_iter),
            **settings,
        )
        if calibrate:
            if int(calibration_cv) < 2:
                raise ValueError(f"calibration_cv must be >= 2, got {calibration_cv!r}")
            # ensemble=False: one SVM fit on all rows (so the weights are one
            # well-defined model); the folds only fit the sigmoid map.
            est = CalibratedClassifierCV(
                est, method="sigmoid", cv=int(calibration_cv), ensemble=False
            )
    return Pipeline([("scale", StandardScaler()), ("clf", est)])


def _c_param(pipeline: Pipeline) -> str:
    clf = pipeline.named_steps["clf"]
    return "clf__estimator__C" if isinstance(clf, CalibratedClassifierCV) else "clf__C"


def _linear_models(estimator: Any) -> list[Any]:
    """The fitted linear models (objects with ``coef_``) inside ``estimator``."""
    if isinstance(estimator, Pipeline):
        estimator = estimator[-1]
    if isinstance(estimator, CalibratedClassifierCV):
        return [cc.estimator for cc in estimator.calibrated_classifiers_]
    if hasattr(estimator, "coef_"):
        return [estimator]
    raise TypeError(f"{type(estimator).__name__} has no linear coefficients")


def count_nonzero_weights(estimator: Any) -> int:
    """Number of non-zero entries of the fitted coefficient matrix.

    For a calibrated ensemble a weight counts if any member uses it.
    """
    coefs = [np.asarray(m.coef_) for m in _linear_models(estimator)]
    return int(np.count_nonzero(np.any(np.stack(coefs) != 0, axis=0)))


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _expand(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    if value == "all":
        return list(allowed)
    _check_choice(value, allowed + ("all",), what)
    return [value]


def _class_name(label: Any, label_names: list[str] | None) -> str:
    if label_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(label_names):
        return f"{label_names[int(label)]!r} (label {int(label)})"
    return repr(label.item() if isinstance(label, np.generic) else label)


def _check_training_data(
    X: Any, y: Any, *, cv: int, label_names: list[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and y have different lengths: X has {X.shape[0]} rows, y has {y.shape[0]} labels"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X is empty (shape {X.shape})")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"X must be real numbers, got dtype {X.dtype}")
    finite_rows = np.isfinite(X).all(axis=1)
    if not finite_rows.all():
        bad = np.flatnonzero(~finite_rows)
        raise ValueError(
            f"X contains NaN or infinity in {bad.size} of {X.shape[0]} rows "
            f"(first: row {int(bad[0])}); remove or re-extract those features"
        )
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}")

    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        only = f"only class {_class_name(classes[0], label_names)}" if classes.size else "no labels"
        raise ValueError(f"need at least 2 classes to train a classifier, got {only}")
    small = [(c, n) for c, n in zip(classes, counts) if n < cv]
    if small:
        listed = ", ".join(f"class {_class_name(c, label_names)} has {n}" for c, n in small[:10])
        if len(small) > 10:
            listed += f" and {len(small) - 10} more classes are as small"
        fewest = int(counts.min())
        if fewest >= 3:
            fix = f"use a smaller --cv (2 to {fewest} here) or add examples"
        elif fewest == 2:
            fix = "use --cv 2 or add examples"
        else:
            fix = "add examples: cross-validation needs at least 2 per class"
        raise ValueError(
            f"every class needs at least cv={cv} training examples for {cv}-fold "
            f"stratified cross-validation, but {listed}; {fix}"
        )
    return X, y, classes, counts


def _check_Cs(Cs: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(Cs, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("Cs must be a non-empty 1-D sequence of positive numbers")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"Cs must be positive finite numbers, got {arr.tolist()}")
    # Ascending, so that GridSearchCV's first-best rule breaks ties toward the
    # strongest regularisation (the simpler model).
    return np.unique(arr)


def _check_scoring(scoring: Any) -> None:
    if not isinstance(scoring, str):
        raise ValueError(f"scoring must be the name of a sklearn scorer, got {scoring!r}")
    try:
        get_scorer(scoring)
    except ValueError:
        raise ValueError(
            f"unknown scoring {scoring!r}; use a name from "
            f"sklearn.metrics.get_scorer_names(), e.g. 'accuracy', "
            f"'balanced_accuracy', 'f1_macro' ({len(get_scorer_names())} available)"
        ) from None


def train(
    X: Any,
    y: Any,
    *,
    classifier: str = "all",
    penalty: str = "all",
    cv: int = 5,
    Cs: Any = DEFAULT_CS,
    class_weight: str | None = None,
    calibrate: bool = False,
    scoring: str = "accuracy",
    random_state: int = 0,
    n_jobs: int | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    label_names: list[str] | None = None,
) -> TrainResult:
    """Choose and fit a linear classifier by cross-validation on ``(X, y)``.

    ``X, y`` must be the training rows only: every fold split, every scaler
    fit and the final refit use nothing else, so a held-out split that is not
    passed here stays unseen.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Training features.
    y : array-like of shape (n_samples,)
        Training labels (typically integer indices into ``label_names``).
    classifier : {"logreg", "svm", "all"}
    penalty : {"l1", "l2", "all"}
        ``"all"`` tries every value; every combination is one candidate.
    cv : int
        Folds of ``StratifiedKFold(shuffle=True, random_state=random_state)``;
        all candidates are scored on the same folds.
    Cs : sequence of float
        Grid of ``C`` values tried for each candidate.
    class_weight : None or "balanced"
    calibrate : bool
        Give SVM candidates ``predict_proba`` via sigmoid calibration.
    scoring : str
        A sklearn scorer name used for the CV score.
    random_state : int
        Seed of the fold shuffling and of the stochastic solvers.
    n_jobs : int or None
        Parallel fits within each grid search.
    max_iter : int
        Solver iteration cap.
    label_names : list of str, optional
        Only used to name classes in error messages.

    Returns
    -------
    TrainResult
        ``candidates`` sorted best first (mean CV score descending; ties go to
        L2 before L1, then logistic regression before SVM).
    """
    X, y, _, counts = _check_training_data(X, y, cv=cv, label_names=label_names)
    classifiers = _expand(classifier, CLASSIFIERS, "classifier")
    penalties = _expand(penalty, PENALTIES, "penalty")
    Cs = _check_Cs(Cs)
    _check_class_weight(class_weight)
    if isinstance(class_weight, dict):
        raise ValueError("train() takes class_weight None or 'balanced'")
    _check_scoring(scoring)

    calibration_cv = CALIBRATION_CV
    if calibrate and "svm" in classifiers:
        # StratifiedKFold puts at most ceil(n/cv) members of a class in a
        # validation fold; the calibration CV runs on what is left.
        smallest = int(min(n - math.ceil(n / cv) for n in counts))
        calibration_cv = min(CALIBRATION_CV, smallest)
        if calibration_cv < 2:
            raise ValueError(
                f"calibrate=True needs at least 2 examples of every class in each "
                f"cross-validation training fold, but with cv={cv} the smallest "
                f"class ({int(counts.min())} examples) leaves {smallest}; add "
                f"examples or train without calibration"
            )

    splitter = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    candidates: list[CandidateResult] = []
    estimators: dict[str, Pipeline] = {}
    for pen in penalties:
        for clf in classifiers:
            pipeline = make_pipeline(
                clf,
                pen,
                class_weight=class_weight,
                calibrate=calibrate,
                random_state=random_state,
                max_iter=max_iter,
                calibration_cv=calibration_cv,
            )
            param = _c_param(pipeline)
            search = GridSearchCV(
                pipeline,
                {param: [float(c) for c in Cs]},
                scoring=scoring,
                cv=splitter,
                n_jobs=n_jobs,
                refit=True,
                error_score="raise",
            )
            start = time.perf_counter()
            search.fit(X, y)
            seconds = time.perf_counter() - start
            i = int(search.best_index_)
            result = CandidateResult(
                classifier=clf,
                penalty=pen,
                best_C=float(search.best_params_[param]),
                cv_score_mean=float(search.cv_results_["mean_test_score"][i]),
                cv_score_std=float(search.cv_results_["std_test_score"][i]),
                fit_seconds=float(seconds),
                n_nonzero_weights=count_nonzero_weights(search.best_estimator_),
            )
            candidates.append(result)
            estimators[result.name] = search.best_estimator_

    # Round the mean so that float noise from summing equal fold scores in a
    # different order cannot beat the simplicity tie-break.
    candidates.sort(
        key=lambda c: (
            -round(c.cv_score_mean, 12),
            _PENALTY_RANK[c.penalty],
            _CLASSIFIER_RANK[c.classifier],
        )
    )
    best = candidates[0]
    return TrainResult(
        estimator=estimators[best.name], name=best.name, candidates=candidates, scoring=scoring,
        estimators=estimators,
    )


def predict_scores(estimator: Any, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted labels and the scores to rank them by (for ROC-AUC).

    Returns ``(pred, scores)``: ``scores`` is ``predict_proba`` (n, n_classes)
    when available, else ``decision_function`` ((n,) for binary, (n,
    n_classes) otherwise), else ``None``. Columns follow ``estimator.classes_``.
    """
    pred = np.asarray(estimator.predict(X))
    if hasattr(estimator, "predict_proba"):
        return pred, np.asarray(estimator.predict_proba(X))
    if hasattr(estimator, "decision_function"):
        return pred, np.asarray(estimator.decision_function(X))
    return pred, None


# --------------------------------------------------------------------------
# Out-of-core training (SGD, straight from a feature store)
# --------------------------------------------------------------------------

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
        (SGDClassifier), used like :func:`make_pipeline`'s and saved with
        :func:`save_classifier`.
    """
    from featx.store import FeatureStore

    _check_choice(loss, SGD_LOSSES, "loss")
    _check_choice(penalty, SGD_PENALTIES, "penalty")
    alpha = _check_number(alpha, "alpha")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
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
    labels = store.y  # one int per row; the features stay on disk
    index = store.split_index(split) if rows is None else np.sort(np.asarray(rows, np.int64))
    index = index[labels[index] >= 0]
    y = labels[index]
    n = int(index.size)
    if n == 0:
        raise ValueError(f"split {split!r} of {store.path} has no labelled rows to train on")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(
            f"need at least 2 classes to train a classifier, but split {split!r} of "
            f"{store.path} has only class {_class_name(classes[0], label_names)}"
        )
    if class_weight == "balanced":
        # partial_fit refuses "balanced" (it would only see one chunk's counts)
        class_weight = {int(c): float(n / (classes.size * k)) for c, k in zip(classes, counts)}
    elif isinstance(class_weight, dict):
        present = set(classes.tolist())
        unknown = [k for k in class_weight if k not in present]
        if unknown:
            raise ValueError(
                f"class_weight names classes that split {split!r} does not have: "
                f"{unknown}; its classes are {classes.tolist()}"
            )
        class_weight = {int(c): float(w) for c, w in class_weight.items()}

    # Pass 1: the scaler, over contiguous chunks (and a check that every feature is finite).
    scaler = StandardScaler()
    for start in range(0, n, chunk_size):
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
    block = max(1, chunk_size // _BLOCKS_PER_CHUNK)
    per_chunk = chunk_size // block
    block_starts = np.arange(0, n, block)
    lo, hi = _AVERAGE_STEP_RANGE
    step = min(hi, max(lo, n // _AVERAGE_STEPS_PER_EPOCH))
    rng = np.random.default_rng(random_state)
    coef_sum = intercept_sum = None
    seen = 0
    # Passes 2..epochs+1: SGD over random blocks, averaging the iterates as it goes.
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
    return Pipeline([("scale", scaler), ("clf", clf)])


# The regularisation grid of search_sgd. alpha is roughly 1 / (C * n): over
# 10^3-10^7 training rows these span C = 1e-5 ... 1e3, which covers train()'s
# own grid (DEFAULT_CS, 1e-4 ... 1e2) at every size.
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
    row's path: the same rows whatever the store's row order, and never the validation or test split."""
    import hashlib

    labels = store.y
    index = store.split_index(split)
    index = index[labels[index] >= 0]
    paths = store.paths
    holdout: list[int] = []
    for c in np.unique(labels[index]):
        rows = index[labels[index] == c]
        ranked = sorted(rows.tolist(), key=lambda r: hashlib.sha256(f"{seed}:{paths[r]}".encode(
            "utf-8", "surrogateescape")).hexdigest())
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


# --------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------


class ModelFileError(Exception):
    """The file is not a readable featx classifier."""


class UnsafeModelError(ModelFileError):
    """The file names types outside :data:`TRUSTED_TYPES`; it was not loaded."""

    def __init__(self, message: str, untrusted: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.untrusted = list(untrusted)


class FingerprintMismatch(ValueError):
    """Features come from another backbone than the classifier was trained on."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.differences = dict(differences or {})


FILE_FORMAT = "featx-classifier"
FILE_FORMAT_VERSION = 1

# Every type featx writes into a classifier file, and nothing else: whatever
# the schema names outside this list is refused before anything is built.
# skops itself trusts every sklearn estimator by default, which is wider than
# featx needs, so this list is checked independently of skops' own audit.
TRUSTED_TYPES: tuple[str, ...] = (
    # containers of the payload and of sklearn's params/attributes; skops
    # stores every JSON primitive as a "builtins.str" node and names int, float
    # and bool only as dict key types (e.g. a class_weight dict)
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    # fitted arrays (read back with allow_pickle=False) and the numeric scalars
    # sklearn keeps as attributes (n_samples_seen_, intercept values, counts)
    "numpy.ndarray",
    "numpy.bool_",
    "numpy.float32",
    "numpy.float64",
    "numpy.int32",
    "numpy.int64",
    # the estimators make_pipeline builds
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    # train_sgd's classifier and the loss object it keeps (_loss_function_),
    # one per loss train_sgd accepts; skops rebuilds the loss by calling the
    # class with its saved constructor args (Hinge(1.0), CyHalfBinomialLoss())
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._sgd_fast.Hinge",
    "sklearn._loss._loss.CyHalfBinomialLoss",
)

# A featx schema is a few kB and its arrays a few MB (2048 features x 1000
# classes of float64 is 16 MB); refuse absurd sizes before decompressing
# anything, so a zip bomb cannot exhaust memory.
_MAX_SCHEMA_BYTES = 64 * 1024 * 1024
_MAX_UNCOMPRESSED_BYTES = 2 * 1024**3


@dataclass
class SavedClassifier:
    """A loaded classifier file."""

    estimator: Pipeline
    fingerprint: dict
    label_names: list[str]
    info: dict


def _json_default(obj: Any) -> Any:
    # Convert the values callers naturally have at hand (numpy scalars and
    # arrays, paths, result dataclasses) to plain JSON types.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-able")


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-able (dicts, lists, str, numbers): {exc}") from None


def _schema_type_names(schema: Any) -> set[str]:
    """Every ``module.name`` the skops schema refers to, walked iteratively."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            module, name = node.get("__module__"), node.get("__class__")
            if module is not None or name is not None:
                found.add(f"{module}.{name}")
            if node.get("__loader__") == "MethodNode":
                content = node.get("content")
                func = content.get("func") if isinstance(content, dict) else None
                found.add(f"{module}.{name}.{func}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _refuse_untrusted(names: set[str] | list[str]) -> None:
    untrusted = sorted(set(names) - set(TRUSTED_TYPES))
    if untrusted:
        raise UnsafeModelError(
            "refusing to load: the file refers to types featx never writes: "
            + ", ".join(untrusted)
            + ". It was not made by featx or has been tampered with.",
            untrusted,
        )


def _audit(data: bytes) -> None:
    """Raise unless every type named in the skops bytes is in :data:`TRUSTED_TYPES`.

    Only reads the zip and its JSON schema; nothing is imported or built.
    Two independent passes: featx's own walk of the raw schema, then skops'
    node tree (which also sees types implied by its loaders).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            try:
                info = zf.getinfo("schema.json")
            except KeyError:
                raise ModelFileError("no schema.json inside; not a skops file") from None
            if info.file_size > _MAX_SCHEMA_BYTES:
                raise ModelFileError(f"schema.json is implausibly large ({info.file_size} bytes)")
            total = sum(member.file_size for member in zf.infolist())
            if total > _MAX_UNCOMPRESSED_BYTES:
                raise ModelFileError(f"implausibly large content ({total} bytes uncompressed)")
            schema = json.loads(zf.read(info))
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError,
            json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"corrupt skops file: {type(exc).__name__}: {exc}") from None
    # Ours first, so a hostile file is reported as unsafe even when it would
    # also trip skops' parser.
    _refuse_untrusted(_schema_type_names(schema))
    try:
        skops_untrusted = sio.get_untrusted_types(data=data)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        # skops raises these on schemas it cannot make sense of.
        raise ModelFileError(f"unreadable skops schema: {type(exc).__name__}: {exc}") from None
    _refuse_untrusted(skops_untrusted)


def save_classifier(
    path: str | os.PathLike,
    estimator: Pipeline,
    *,
    fingerprint: dict,
    label_names: list[str],
    info: dict,
) -> None:
    """Save a fitted pipeline and its metadata as one ``.skops`` file.

    ``fingerprint`` identifies the backbone whose features the classifier
    expects; ``label_names[i]`` names class ``i``; ``info`` is free JSON-able
    metadata. The file is written to a temporary name beside ``path`` and then
    renamed, so ``path`` is never left half-written.
    """
    if not isinstance(estimator, Pipeline):
        raise TypeError(f"estimator must be a sklearn Pipeline, got {type(estimator).__name__}")
    check_is_fitted(estimator)
    if not isinstance(fingerprint, dict) or not isinstance(info, dict):
        raise TypeError("fingerprint and info must be dicts")
    if isinstance(label_names, str):
        raise TypeError("label_names must be a list of names, not one string")
    label_names = [str(n) for n in label_names]
    classes = np.asarray(estimator.classes_)
    if np.issubdtype(classes.dtype, np.integer) and (
        classes.min() < 0 or classes.max() >= len(label_names)
    ):
        raise ValueError(
            f"the estimator predicts labels {classes.tolist()} but only "
            f"{len(label_names)} label names were given"
        )
    metadata = _to_json(
        {"fingerprint": fingerprint, "label_names": label_names, "info": info}, "metadata"
    )
    payload = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "estimator": estimator,
        "metadata": metadata,
    }
    data = sio.dumps(payload, compression=zipfile.ZIP_DEFLATED)
    # Never write a file that load_classifier would refuse.
    try:
        _audit(data)
    except UnsafeModelError as exc:
        raise ValueError(
            f"this estimator contains types featx does not trust on load ({', '.join(exc.untrusted)}); "
            "build it with featx.linear.make_pipeline"
        ) from None

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL on a fresh random name: never follow or clobber someone's file;
    # mode 0o666 lets the umask decide permissions like a normal open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_classifier(path: str | os.PathLike) -> SavedClassifier:
    """Load a classifier saved by :func:`save_classifier`, without running code from it.

    Raises
    ------
    InputNotFound
        ``path`` does not exist or is a folder (a FileNotFoundError).
    UnsafeModelError
        The file refers to a type outside :data:`TRUSTED_TYPES`; nothing was built.
    ModelFileError
        The file is not a featx classifier (not a skops file, corrupt, or
        another kind of skops file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "a folder, not a classifier file" if os.path.isdir(path) else "not there"
        raise InputNotFound(f"no classifier file at {path} ({what}; `featx train` writes one)")
    # Read once: the bytes that are audited are the bytes that are loaded.
    with open(path, "rb") as f:
        data = f.read()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(
            f"{path} is not a featx classifier file (expected a .skops zip archive; "
            "pickle/joblib files are not accepted because loading them can run code)"
        )
    try:
        _audit(data)
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"{path}: {exc}", exc.untrusted) from None
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    try:
        payload = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        # Defence in depth: skops' own audit found what ours did not.
        raise UnsafeModelError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means a bad file
        raise ModelFileError(f"{path}: corrupt classifier file: {type(exc).__name__}: {exc}") from None

    if not (isinstance(payload, dict) and payload.get("format") == FILE_FORMAT):
        raise ModelFileError(f"{path} is a skops file but not a featx classifier")
    version = payload.get("format_version")
    if version != FILE_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has classifier format version {version!r}; this featx reads "
            f"version {FILE_FORMAT_VERSION}"
        )
    estimator = payload.get("estimator")
    try:
        metadata = json.loads(payload.get("metadata"))
        fingerprint, label_names, info = (
            metadata["fingerprint"],
            metadata["label_names"],
            metadata["info"],
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: corrupt classifier metadata: {exc}") from None
    if not isinstance(estimator, Pipeline):
        raise ModelFileError(f"{path}: no sklearn Pipeline inside")
    if not (
        isinstance(fingerprint, dict)
        and isinstance(info, dict)
        and isinstance(label_names, list)
        and all(isinstance(n, str) for n in label_names)
    ):
        raise ModelFileError(f"{path}: corrupt classifier metadata")
    return SavedClassifier(
        estimator=estimator, fingerprint=fingerprint, label_names=label_names, info=info
    )


_MISSING = "<missing>"


def check_fingerprint(expected: dict, actual: dict, *, what: str) -> None:
    """Raise :class:`FingerprintMismatch` unless the two fingerprints agree.

    Values are compared after a JSON round trip, so a tuple read from one
    source equals the list saved in a classifier file.
    """
    exp = json.loads(_to_json(expected, "expected fingerprint"))
    got = json.loads(_to_json(actual, "actual fingerprint"))
    differences = {
        key: (exp.get(key, _MISSING), got.get(key, _MISSING))
        for key in sorted(set(exp) | set(got))
        if exp.get(key, _MISSING) != got.get(key, _MISSING)
    }
    if differences:
        lines = "\n".join(
            f"  {key}: expected {e!r}, got {g!r}" for key, (e, g) in differences.items()
        )
        raise FingerprintMismatch(
            f"{what} does not match the backbone the classifier was trained on "
            f"({len(differences)} differing key{'s' if len(differences) > 1 else ''}):\n{lines}",
            differences,
        )
