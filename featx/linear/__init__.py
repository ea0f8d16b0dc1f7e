"""Linear classifiers on cached CNN features.

One module per job; this package re-exports their public names, so
``featx.linear.train`` and ``from featx.linear import load_classifier`` work
as they always did.

- :mod:`featx.linear.cv`: every candidate (classifier x penalty) is tuned
  over a log grid of ``C`` by stratified cross-validation on the training
  rows only; the best candidate is refit on all training rows (:func:`train`).
- :mod:`featx.linear.sgd`: :func:`train_sgd` instead trains one linear model
  by averaged SGD straight from a feature store, a chunk of rows at a time,
  for splits too large to load; :func:`search_sgd` chooses its ``alpha`` on a
  held-out part of the split.
- :mod:`featx.linear.store_training`: :func:`train_store_sgd`, the store-level
  entry point (``featx train --sgd``): the search on the train split, the
  refit saved as a classifier file, optionally with the candidates on a Dask
  cluster.
- :mod:`featx.linear.files`: classifiers are saved with :mod:`skops.io` and
  loaded back only after every type named in the file has been checked
  against :data:`TRUSTED_TYPES`, so opening a classifier file never runs code
  from it.
- :mod:`featx.linear._checks`: argument checks shared by ``cv`` and ``sgd``.
"""

from __future__ import annotations

from featx.linear.cv import (
    CALIBRATION_CV,
    CLASSIFIERS,
    DEFAULT_CS,
    DEFAULT_MAX_ITER,
    PENALTIES,
    CandidateResult,
    TrainResult,
    count_nonzero_weights,
    make_pipeline,
    predict_scores,
    train,
)
from featx.linear.files import (
    FILE_FORMAT,
    FILE_FORMAT_VERSION,
    TRUSTED_TYPES,
    FingerprintMismatch,
    ModelFileError,
    SavedClassifier,
    UnsafeModelError,
    check_fingerprint,
    load_classifier,
    save_classifier,
)
from featx.linear.sgd import (
    DEFAULT_SGD_ALPHAS,
    SGD_LOSSES,
    SGD_PENALTIES,
    SGDSearchResult,
    search_sgd,
    train_sgd,
)
from featx.linear.store_training import train_store_sgd

__all__ = [
    "CLASSIFIERS",
    "PENALTIES",
    "DEFAULT_CS",
    "DEFAULT_MAX_ITER",
    "CALIBRATION_CV",
    "TRUSTED_TYPES",
    "FILE_FORMAT",
    "FILE_FORMAT_VERSION",
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
    "train_store_sgd",
    "predict_scores",
    "count_nonzero_weights",
    "save_classifier",
    "load_classifier",
    "check_fingerprint",
]
