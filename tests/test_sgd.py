"""Tests for featx.linear.train_sgd: SGD straight from a feature store, a chunk at a time.

The stores hold real data (sklearn's bundled digits and breast cancer) written with the real
StoreWriter, sorted by class like a store extracted from class folders.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import featx.linear as linear
from featx.backbones import fingerprint_id
from featx.linear import (
    SGD_LOSSES,
    SGD_PENALTIES,
    load_classifier,
    predict_scores,
    save_classifier,
    train,
    train_sgd,
)
from featx.store import FeatureStore, Rows, StoreError, StoreWriter

EPOCHS = 5
CHUNK = 128  # digits has 1,078 labelled training rows: 9 chunks per epoch
N_UNLABELLED = 24
# SGD accuracy varies by about 0.5 points (std) with the row order on digits' 719 validation
# rows, so chunked and in-memory SGD are compared over a few seeds, not on one draw.
SEEDS = (0, 1, 2)
# train()'s candidates at the SGD losses: hinge is a linear SVM, log_loss a logistic regression
TRAIN_CLASSIFIER = {"hinge": "svm", "log_loss": "logreg"}


@pytest.fixture(autouse=True)
def _strict_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", FutureWarning)
        yield


def write_store(path, X, labels, splits, *, blocks=4):
    """Write rows (labels as names, '' for unlabelled) into a new store, in several appends."""
    X = np.asarray(X, np.float32)
    fp = {"backbone": "test", "feature_dim": int(X.shape[1]), "image_size": [8, 8], "pooling": "none"}
    with StoreWriter(path, fingerprint=fp, fingerprint_id=fingerprint_id(fp)) as writer:
        for part in np.array_split(np.arange(len(X)), blocks):
            writer.append(Rows(
                features=X[part],
                sha256=np.array([f"{i:064x}" for i in part]),
                path=np.array([f"{labels[i] or 'unlabelled'}/img_{i:05d}.png" for i in part]),
                label=np.asarray(labels)[part],
                split=np.asarray(splits)[part],
                nbytes=np.full(len(part), 1000, np.int64),
                mtime_ns=np.full(len(part), 1_700_000_000_000_000_000, np.int64),
            ))
    return path


def _class_sorted_store(path, X, y, names, *, train_size, n_unlabelled=0):
    """Stratified train/validation split; rows sorted by class like folder-by-folder extraction."""
    idx_train, _ = train_test_split(np.arange(len(y)), train_size=train_size, stratify=y, random_state=0)
    splits = np.full(len(y), "validation", dtype=object)
    splits[idx_train] = "train"
    labels = np.array([names[v] for v in y], dtype=object)
    order = np.argsort(y, kind="stable")
    X, labels, splits = X[order], labels[order], splits[order]
    if n_unlabelled:
        # unlabelled training rows (features of validation digits): train_sgd must skip them
        extra = np.flatnonzero(splits == "validation")[:n_unlabelled]
        X = np.vstack([X, X[extra]])
        labels = np.concatenate([labels, np.full(n_unlabelled, "", dtype=object)])
        splits = np.concatenate([splits, np.full(n_unlabelled, "train", dtype=object)])
    return write_store(path, X, labels.astype(str), splits.astype(str))


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    X, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("digits") / "digits.h5"
    return _class_sorted_store(path, X, y, [str(i) for i in range(10)], train_size=0.6,
                               n_unlabelled=N_UNLABELLED)


@pytest.fixture(scope="module")
def digits_data(digits_store):
    with FeatureStore(digits_store) as store:
        X_train, y_train = store.split("train")
        X_val, y_val = store.split("validation")
        n_rows_train = store.split_index("train").size
    assert n_rows_train == len(y_train) + N_UNLABELLED
    return X_train, y_train, X_val, y_val


@pytest.fixture(scope="module")
def cancer_store(tmp_path_factory):
    X, y = load_breast_cancer(return_X_y=True)
    path = tmp_path_factory.mktemp("cancer") / "cancer.h5"
    return _class_sorted_store(path, X, y, ["malignant", "benign"], train_size=0.5)


@pytest.fixture(scope="module")
def sgd_models(digits_store):
    return {
        (loss, penalty, seed): train_sgd(digits_store, loss=loss, penalty=penalty, chunk_size=CHUNK,
                                         epochs=EPOCHS, random_state=seed)
        for loss in SGD_LOSSES for penalty in SGD_PENALTIES for seed in SEEDS
    }


@pytest.fixture(scope="module")
def train_models(digits_data):
    X_train, y_train, _, _ = digits_data
    return {
        classifier: train(X_train, y_train, classifier=classifier, penalty="l2", cv=3,
                          Cs=(0.01, 0.1, 1.0)).estimator
        for classifier in ("svm", "logreg")
    }


def _accuracy(model, X, y) -> float:
    return 100.0 * float(np.mean(model.predict(X) == y))


# -- accuracy ----------------------------------------------------------------


@pytest.mark.parametrize("penalty", SGD_PENALTIES)
@pytest.mark.parametrize("loss", SGD_LOSSES)
def test_chunked_matches_in_memory_sgd(sgd_models, train_models, digits_data, loss, penalty):
    X_train, y_train, X_val, y_val = digits_data
    scaler = StandardScaler().fit(X_train)
    acc_chunked, acc_memory = [], []
    for seed in SEEDS:
        chunked = sgd_models[(loss, penalty, seed)]
        assert isinstance(chunked, Pipeline) and list(chunked.named_steps) == ["scale", "clf"]
        np.testing.assert_array_equal(chunked.classes_, np.arange(10))
        # pass 1 standardises like a scaler fit on all training rows at once, unlabelled rows left out
        fitted_scaler = chunked.named_steps["scale"]
        assert fitted_scaler.n_samples_seen_ == len(y_train)
        np.testing.assert_allclose(fitted_scaler.mean_, scaler.mean_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fitted_scaler.scale_, scaler.scale_, rtol=1e-5)
        # The same model fit in memory: averaged SGD with the same hyper-parameters and epochs,
        # on the same standardised training rows.
        in_memory = SGDClassifier(loss=loss, penalty=penalty, alpha=1e-4, l1_ratio=0.15,
                                  average=True, max_iter=EPOCHS, tol=None, random_state=seed)
        in_memory.fit(scaler.transform(X_train), y_train)
        acc_chunked.append(_accuracy(chunked, X_val, y_val))
        acc_memory.append(_accuracy(in_memory, scaler.transform(X_val), y_val))

    reference = train_models[TRAIN_CLASSIFIER[loss]]  # CV-tuned L2 model of the same loss family
    acc_train = _accuracy(reference, X_val, y_val)
    chunked_mean, memory_mean = float(np.mean(acc_chunked)), float(np.mean(acc_memory))
    print(f"{loss}/{penalty}: chunked {chunked_mean:.2f} {np.round(acc_chunked, 1).tolist()}  "
          f"in-memory SGD {memory_mean:.2f} {np.round(acc_memory, 1).tolist()}  train() {acc_train:.2f}")
    # The requirement: within 1 point of the in-memory model on the same data.
    assert abs(chunked_mean - memory_mean) <= 1.0
    # Any one draw stays close too (single draws differ by up to 1.5 points over seeds 0-9).
    assert max(abs(a - b) for a, b in zip(acc_chunked, acc_memory)) <= 2.5
    # Against train()'s CV-tuned L2 model (SGD keeps the default alpha and 5 epochs, no
    # tuning): observed 1.6-2.6 points below it here; 4 points leaves room for other platforms.
    assert chunked_mean >= acc_train - 4.0
    assert chunked_mean > 92.0


def test_binary_problem(cancer_store):
    with FeatureStore(cancer_store) as store:
        X_train, y_train = store.split("train")
        X_val, y_val = store.split("validation")
        names = store.label_names
    assert names == ["benign", "malignant"]
    model = train_sgd(cancer_store, loss="log_loss", chunk_size=32, epochs=EPOCHS)
    scaler = StandardScaler().fit(X_train)
    in_memory = SGDClassifier(loss="log_loss", average=True, max_iter=EPOCHS, tol=None,
                              random_state=0).fit(scaler.transform(X_train), y_train)
    acc_chunked = _accuracy(model, X_val, y_val)
    acc_memory = _accuracy(in_memory, scaler.transform(X_val), y_val)
    assert abs(acc_chunked - acc_memory) <= 1.0
    assert acc_chunked > 94.0
    assert model.decision_function(X_val).shape == (len(y_val),)
    assert model.predict_proba(X_val).shape == (len(y_val), 2)


def test_scores_like_in_memory_pipelines(sgd_models, digits_data):
    _, _, X_val, _ = digits_data
    hinge = sgd_models[("hinge", "l2", 0)]
    assert not hasattr(hinge, "predict_proba")  # a linear SVM has decision values only
    pred, scores = predict_scores(hinge, X_val)
    assert scores.shape == (len(X_val), 10)
    np.testing.assert_array_equal(pred, hinge.classes_[scores.argmax(axis=1)])

    logistic = sgd_models[("log_loss", "l2", 0)]
    pred, proba = predict_scores(logistic, X_val)
    assert proba.shape == (len(X_val), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # (not proba.argmax: one-vs-rest probabilities saturate at 1.0 for confident rows and tie)
    np.testing.assert_array_equal(pred, logistic.classes_[logistic.decision_function(X_val).argmax(axis=1)])
    assert np.mean(pred == logistic.classes_[proba.argmax(axis=1)]) > 0.99


# -- memory and order ---------------------------------------------------------------


def test_memory_bounded_by_the_chunk(monkeypatch, digits_store, digits_data):
    _, y_train, _, _ = digits_data
    requested: list[np.ndarray] = []
    fitted: list[int] = []
    original_features = FeatureStore.features
    original_sgd = SGDClassifier.partial_fit
    original_scaler = StandardScaler.partial_fit

    def features(self, rows):
        requested.append(np.asarray(rows).copy())
        return original_features(self, rows)

    def sgd_partial_fit(self, X, y, *args, **kwargs):
        fitted.append(len(X))
        return original_sgd(self, X, y, *args, **kwargs)

    def scaler_partial_fit(self, X, *args, **kwargs):
        fitted.append(len(X))
        return original_scaler(self, X, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "features", features)
    monkeypatch.setattr(SGDClassifier, "partial_fit", sgd_partial_fit)
    monkeypatch.setattr(StandardScaler, "partial_fit", scaler_partial_fit)
    # Also forbid the whole-split readers.
    monkeypatch.setattr(FeatureStore, "split", lambda *a, **k: pytest.fail("split() loads the whole split"))
    monkeypatch.setattr(FeatureStore, "X", property(lambda self: pytest.fail("X loads the whole store")))

    chunk, epochs = 100, 2
    train_sgd(digits_store, chunk_size=chunk, epochs=epochs)

    assert requested and fitted
    assert max(len(r) for r in requested) <= chunk
    assert max(fitted) <= chunk
    # Every labelled training row is read once for the scaler and once per epoch; nothing else is.
    with FeatureStore(digits_store) as store:
        train_rows = store.split_index("train")
        labelled = train_rows[store.y[train_rows] >= 0]
    assert labelled.size == len(y_train)
    rows, times = np.unique(np.concatenate(requested), return_counts=True)
    np.testing.assert_array_equal(rows, labelled)
    assert (times == epochs + 1).all()
    assert sum(fitted) == (epochs + 1) * labelled.size


def test_chunks_mix_classes_and_order_is_seeded(monkeypatch, digits_store):
    # The store is sorted by class; chunks must still mix classes (not one class per chunk).
    labels_seen: list[np.ndarray] = []
    original = SGDClassifier.partial_fit

    def spy(self, X, y, *args, **kwargs):
        labels_seen.append(np.asarray(y).copy())
        return original(self, X, y, *args, **kwargs)

    monkeypatch.setattr(SGDClassifier, "partial_fit", spy)
    a = train_sgd(digits_store, chunk_size=CHUNK, epochs=2, random_state=3)
    first_run = labels_seen[:]
    labels_seen.clear()
    b = train_sgd(digits_store, chunk_size=CHUNK, epochs=2, random_state=3)
    assert all(np.array_equal(x, y) for x, y in zip(first_run, labels_seen))
    np.testing.assert_array_equal(a[-1].coef_, b[-1].coef_)
    np.testing.assert_array_equal(a[-1].intercept_, b[-1].intercept_)
    assert np.mean([np.unique(y).size for y in first_run]) >= 5

    labels_seen.clear()
    c = train_sgd(digits_store, chunk_size=CHUNK, epochs=2, random_state=4)
    assert not np.array_equal(a[-1].coef_, c[-1].coef_)


def test_accepts_an_open_store_and_leaves_it_open(digits_store, digits_data):
    _, _, X_val, y_val = digits_data
    with FeatureStore(digits_store) as store:
        model = train_sgd(store, chunk_size=512, epochs=2)
        assert store.features(np.arange(3)).shape == (3, 64)  # still open
    assert _accuracy(model, X_val, y_val) > 90.0


# -- saving ---------------------------------------------------------------------


@pytest.mark.parametrize("loss", SGD_LOSSES)
def test_save_load_round_trip(tmp_path, sgd_models, digits_store, digits_data, loss):
    _, _, X_val, _ = digits_data
    model = sgd_models[(loss, "elasticnet", 0)]
    with FeatureStore(digits_store) as store:
        names, fp = store.label_names, store.fingerprint
    path = tmp_path / "sgd.skops"
    save_classifier(path, model, fingerprint=fp, label_names=names, info={"name": f"sgd-{loss}"})
    loaded = load_classifier(path)
    assert loaded.label_names == names and loaded.fingerprint == fp
    assert isinstance(loaded.estimator[-1], SGDClassifier)
    np.testing.assert_array_equal(loaded.estimator.predict(X_val), model.predict(X_val))
    np.testing.assert_array_equal(loaded.estimator.decision_function(X_val), model.decision_function(X_val))
    _, expected = predict_scores(model, X_val)
    _, got = predict_scores(loaded.estimator, X_val)
    np.testing.assert_array_equal(got, expected)


def test_save_load_binary_with_class_weight(tmp_path, cancer_store):
    model = train_sgd(cancer_store, loss="hinge", penalty="l1", class_weight="balanced", chunk_size=64)
    with FeatureStore(cancer_store) as store:
        X, _ = store.split("validation")
        names = store.label_names
    path = tmp_path / "sgd.skops"
    save_classifier(path, model, fingerprint={}, label_names=names, info={})
    loaded = load_classifier(path).estimator
    assert loaded[-1].class_weight == model[-1].class_weight
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))


def test_trusted_types_cover_exactly_the_sgd_losses():
    sgd = [t for t in linear.TRUSTED_TYPES if "_sgd_fast" in t or "_loss._loss" in t or "stochastic" in t]
    assert sorted(sgd) == sorted([
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.linear_model._sgd_fast.Hinge",
        "sklearn._loss._loss.CyHalfBinomialLoss",
    ])


# -- class weights ----------------------------------------------------------------


def test_class_weight_balanced(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)  # 0 = malignant, made the minority here
    keep = np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)[:40]]
    path = _class_sorted_store(tmp_path / "imbalanced.h5", X[keep], y[keep], ["malignant", "benign"],
                               train_size=0.5)
    with FeatureStore(path) as store:
        names = store.label_names  # sorted: benign = 0, malignant = 1
        _, y_train = store.split("train")
        X_val, y_val = store.split("validation")
    minority = names.index("malignant")
    counts = np.bincount(y_train)

    def minority_recall(model):
        pred = model.predict(X_val)
        return float(np.mean(pred[y_val == minority] == minority))

    plain = train_sgd(path, chunk_size=32)
    balanced = train_sgd(path, chunk_size=32, class_weight="balanced")
    weights = balanced[-1].class_weight
    assert isinstance(weights, dict) and sorted(weights) == [0, 1]
    for c in (0, 1):
        assert weights[c] == pytest.approx(len(y_train) / (2 * counts[c]))
    assert plain[-1].class_weight is None
    assert minority_recall(balanced) >= minority_recall(plain)
    assert minority_recall(balanced) >= 0.85

    explicit = train_sgd(path, chunk_size=32, class_weight={0: 1.0, 1: 5.0})
    assert explicit[-1].class_weight == {0: 1.0, 1: 5.0}
    with pytest.raises(ValueError, match="does not have"):
        train_sgd(path, class_weight={0: 1.0, 7: 2.0})


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"loss": "squared_hinge"}, "unknown loss 'squared_hinge'.*'hinge', 'log_loss'"),
        ({"loss": "log"}, "unknown loss"),
        ({"penalty": "none"}, "unknown penalty 'none'.*'elasticnet'"),
        ({"penalty": None}, "unknown penalty"),
        ({"alpha": 0}, "alpha must be a positive"),
        ({"alpha": -1e-4}, "alpha must be a positive"),
        ({"alpha": float("nan")}, "alpha must be a positive"),
        ({"alpha": "1e-4"}, "alpha must be a number"),
        ({"l1_ratio": 1.5}, "l1_ratio must be between 0 and 1"),
        ({"l1_ratio": True}, "l1_ratio must be a number"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"chunk_size": 64.0}, "chunk_size must be an integer"),
        ({"chunk_size": True}, "chunk_size must be an integer"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"random_state": -1}, "random_state must be an integer >= 0"),
        ({"class_weight": "auto"}, "unknown class_weight 'auto'"),
        ({"split": "holdout"}, "split must be train, validation or test"),
        ({"split": "test"}, "no labelled rows"),
    ],
)
def test_bad_arguments(digits_store, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_sgd(digits_store, **kwargs)


def test_bad_store(tmp_path):
    with pytest.raises(TypeError, match="path or a FeatureStore"):
        train_sgd(np.zeros((10, 4)))
    with pytest.raises(StoreError, match="does not exist"):
        train_sgd(tmp_path / "missing.h5")


def test_split_with_one_class_raises(tmp_path):
    X, y = load_digits(return_X_y=True)
    keep = np.r_[np.flatnonzero(y == 3)[:30], np.flatnonzero(y == 5)[:30]]
    labels = np.array([str(v) for v in y[keep]])
    splits = np.where(labels == "3", "train", "validation")
    splits[-5:] = "train"
    labels[-5:] = ""  # unlabelled rows do not count as a class
    path = write_store(tmp_path / "one.h5", X[keep], labels, splits, blocks=2)
    with pytest.raises(ValueError, match=r"at least 2 classes.*only class '3' \(label 0\)"):
        train_sgd(path)
    with pytest.raises(ValueError, match="at least 2 classes.*only class '5'"):
        train_sgd(path, split="validation")


def test_non_finite_features_name_the_file(tmp_path):
    X, y = load_digits(return_X_y=True)
    X = X[:80].copy()
    X[17, 3] = np.nan
    labels = np.array([str(v) for v in y[:80]])
    path = write_store(tmp_path / "nan.h5", X, labels, np.full(80, "train"), blocks=1)
    with pytest.raises(ValueError, match=r"NaN or infinite.*img_00017\.png"):
        train_sgd(path, chunk_size=16)
