"""Choose and fit a linear classifier by cross-validation on in-memory features.

Every candidate (classifier x penalty) is tuned over a log grid of ``C`` by
stratified cross-validation on the training rows only; the best candidate is
refit on all training rows (:func:`train`). :func:`make_pipeline` builds the
``StandardScaler -> classifier`` pipeline of each candidate;
:func:`predict_scores` and :func:`count_nonzero_weights` read any fitted
featx pipeline, including those of :func:`featx.linear.sgd.train_sgd`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import get_scorer, get_scorer_names
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from featx.linear._checks import _check_choice, _check_class_weight, _class_name

__all__ = [
    "CLASSIFIERS",
    "PENALTIES",
    "DEFAULT_CS",
    "DEFAULT_MAX_ITER",
    "CALIBRATION_CV",
    "CandidateResult",
    "TrainResult",
    "make_pipeline",
    "train",
    "predict_scores",
    "count_nonzero_weights",
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

    calibration_cv = _calibration_folds(counts, cv) if calibrate and "svm" in classifiers else CALIBRATION_CV
    splitter = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    candidates: list[CandidateResult] = []
    estimators: dict[str, Pipeline] = {}
    for pen in penalties:
        for clf in classifiers:
            pipeline = make_pipeline(clf, pen, class_weight=class_weight, calibrate=calibrate,
                                     random_state=random_state, max_iter=max_iter, calibration_cv=calibration_cv)
            result, estimator = _tune_candidate(pipeline, clf, pen, X, y, Cs, splitter, scoring, n_jobs)
            candidates.append(result)
            estimators[result.name] = estimator
    candidates.sort(key=_rank_key)
    best = candidates[0]
    return TrainResult(estimator=estimators[best.name], name=best.name, candidates=candidates, scoring=scoring,
                       estimators=estimators)


def _rank_key(c: CandidateResult) -> tuple[float, int, int]:
    """Best first: mean CV score, then L2 before L1, then logistic regression before SVM."""
    # Round the mean so that float noise from summing equal fold scores in a
    # different order cannot beat the simplicity tie-break.
    return (-round(c.cv_score_mean, 12), _PENALTY_RANK[c.penalty], _CLASSIFIER_RANK[c.classifier])


def _calibration_folds(counts: np.ndarray, cv: int) -> int:
    """Folds of the SVM calibration that every class can fill inside each CV training fold."""
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
    return calibration_cv


def _tune_candidate(
    pipeline: Pipeline,
    clf: str,
    pen: str,
    X: np.ndarray,
    y: np.ndarray,
    Cs: np.ndarray,
    splitter: StratifiedKFold,
    scoring: str,
    n_jobs: int | None,
) -> tuple[CandidateResult, Pipeline]:
    """Grid-search ``C`` for one candidate; its result and its refit best pipeline."""
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
    return result, search.best_estimator_


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
