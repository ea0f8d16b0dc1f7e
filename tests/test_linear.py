"""Tests for featx.linear on real data (sklearn's bundled digits and breast cancer)."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import featx.linear as linear
import featx.linear.cv as linear_cv
import featx.linear.files as linear_files
from featx.linear import (
    CLASSIFIERS,
    PENALTIES,
    TRUSTED_TYPES,
    CandidateResult,
    FingerprintMismatch,
    ModelFileError,
    SavedClassifier,
    UnsafeModelError,
    check_fingerprint,
    count_nonzero_weights,
    load_classifier,
    make_pipeline,
    predict_scores,
    save_classifier,
    train,
)

# A short C grid and 3 folds keep the suite fast; the default grid is
# exercised by the CLI, not needed to test the mechanics.
FAST_CS = (0.01, 0.1, 1.0)
COMBOS = [(c, p) for c in CLASSIFIERS for p in PENALTIES]


@pytest.fixture(autouse=True)
def _no_convergence_warnings():
    # Solver settings are part of the product: a ConvergenceWarning on these
    # real datasets is a test failure, not noise.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", FutureWarning)
        yield


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=0.4, stratify=y, random_state=0
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def digit_names():
    return [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def all_result(digits):
    X_train, _, y_train, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return train(X_train, y_train, cv=3, Cs=FAST_CS)


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return X, y


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


@pytest.mark.parametrize("classifier,penalty", COMBOS)
def test_each_candidate_learns_digits(all_result, digits, classifier, penalty):
    X_train, X_test, y_train, y_test = digits
    cand = next(c for c in all_result.candidates if c.name == f"{classifier}-{penalty}")
    assert cand.best_C in FAST_CS
    assert 0.9 < cand.cv_score_mean <= 1.0
    assert 0.0 <= cand.cv_score_std < 0.05
    assert cand.fit_seconds > 0
    # Refit at the chosen C (train() keeps only the winner) and score the
    # held-out rows, which train() never saw.
    pipe = make_pipeline(classifier, penalty, C=cand.best_C).fit(X_train, y_train)
    assert cand.n_nonzero_weights == count_nonzero_weights(pipe)
    held_out = float(np.mean(pipe.predict(X_test) == y_test))
    assert held_out > 0.9, f"{cand.name}: held-out accuracy {held_out:.3f}"


def test_single_candidate(digits):
    X_train, X_test, y_train, y_test = digits
    result = train(X_train, y_train, classifier="svm", penalty="l1", cv=3, Cs=FAST_CS)
    assert result.name == "svm-l1"
    assert [c.name for c in result.candidates] == ["svm-l1"]
    assert isinstance(result.estimator, Pipeline)
    assert isinstance(result.estimator.named_steps["scale"], StandardScaler)
    clf = result.estimator.named_steps["clf"]
    assert isinstance(clf, LinearSVC) and clf.penalty == "l1" and clf.C == result.best.best_C
    assert np.mean(result.estimator.predict(X_test) == y_test) > 0.9


def test_all_returns_every_candidate_sorted(all_result, digits):
    X_train, X_test, y_train, y_test = digits
    names = [c.name for c in all_result.candidates]
    assert sorted(names) == sorted(f"{c}-{p}" for c, p in COMBOS)
    means = [c.cv_score_mean for c in all_result.candidates]
    assert means == sorted(means, reverse=True)
    assert all_result.name == names[0]
    assert all_result.candidates[0].cv_score_mean == max(means)
    assert all_result.best is all_result.candidates[0]
    assert all_result.scoring == "accuracy"

    # The returned estimator is the best candidate at its best C, refit.
    best = all_result.candidates[0]
    clf = all_result.estimator.named_steps["clf"]
    expected_type = LogisticRegression if best.classifier == "logreg" else LinearSVC
    assert isinstance(clf, expected_type)
    assert clf.C == best.best_C
    if best.classifier == "logreg":
        assert clf.l1_ratio == (1.0 if best.penalty == "l1" else 0.0)
    else:
        assert clf.penalty == best.penalty
    assert all_result.estimator.named_steps["scale"].n_samples_seen_ == len(X_train)
    assert np.mean(all_result.estimator.predict(X_test) == y_test) > 0.9


def test_ties_prefer_simpler_candidate(monkeypatch, digits):
    # With equal CV scores, L2 beats L1 and logreg beats svm.
    X_train, _, y_train, _ = digits

    class _ConstantSearch(linear_cv.GridSearchCV):
        def fit(self, X, y=None, **params):
            super().fit(X, y, **params)
            self.cv_results_["mean_test_score"] = np.full_like(self.cv_results_["mean_test_score"], 0.5)
            return self

    # train() runs in featx.linear.cv: patch the name it looks up there
    monkeypatch.setattr(linear_cv, "GridSearchCV", _ConstantSearch)
    result = train(X_train[:200], y_train[:200], cv=2, Cs=(0.1,))
    assert [c.name for c in result.candidates] == ["logreg-l2", "svm-l2", "logreg-l1", "svm-l1"]
    assert result.name == "logreg-l2"


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_l1_gives_sparser_weights_than_l2(digits, classifier):
    X_train, _, y_train, _ = digits
    l1 = make_pipeline(classifier, "l1", C=0.05).fit(X_train, y_train)
    l2 = make_pipeline(classifier, "l2", C=0.05).fit(X_train, y_train)
    n_l1, n_l2 = count_nonzero_weights(l1), count_nonzero_weights(l2)
    assert n_l1 < 0.7 * n_l2, (n_l1, n_l2)


def test_all_candidates_report_l1_sparsity(all_result):
    by_name = {c.name: c for c in all_result.candidates}
    for clf in CLASSIFIERS:
        assert by_name[f"{clf}-l1"].n_nonzero_weights < by_name[f"{clf}-l2"].n_nonzero_weights


def test_cv_only_sees_training_rows(monkeypatch, digits):
    X_train, X_test, y_train, _ = digits
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class RecordingKFold(linear_cv.StratifiedKFold):
        def split(self, X, y=None, groups=None):
            assert len(X) == len(X_train)
            for tr, te in super().split(X, y, groups):
                seen.append((tr, te))
                yield tr, te

    monkeypatch.setattr(linear_cv, "StratifiedKFold", RecordingKFold)
    result = train(X_train, y_train, classifier="all", penalty="l2", cv=3, Cs=FAST_CS)

    # Every fit and score used only indices into the training rows: the
    # held-out split was never passed, so it cannot be touched.
    assert len(seen) == 2 * 3  # one 3-fold split per candidate
    n = len(X_train)
    for tr, te in seen:
        assert tr.max() < n and te.max() < n
        assert np.intersect1d(tr, te).size == 0
    # Both candidates are scored on the same folds.
    first = [te for _, te in seen[:3]]
    for a, b in zip(first, [te for _, te in seen[3:]]):
        np.testing.assert_array_equal(a, b)
    assert np.array_equal(np.sort(np.concatenate(first)), np.arange(n))
    # The final refit used exactly the training rows.
    scaler = result.estimator.named_steps["scale"]
    assert scaler.n_samples_seen_ == n
    np.testing.assert_allclose(scaler.mean_, X_train.mean(axis=0))
    assert not np.allclose(scaler.mean_, np.vstack([X_train, X_test]).mean(axis=0))


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_class_weight_balanced_on_imbalanced_subset(cancer, classifier):
    X, y = cancer  # 0 = malignant (minority here), 1 = benign
    keep = np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)[:25]]
    X_train, X_test, y_train, y_test = train_test_split(
        X[keep], y[keep], train_size=0.5, stratify=y[keep], random_state=0
    )

    def minority_recall(class_weight):
        result = train(
            X_train, y_train, classifier=classifier, penalty="l2", cv=3,
            Cs=(0.001, 0.01, 0.1, 1.0), class_weight=class_weight,
        )
        assert result.estimator.named_steps["clf"].class_weight == class_weight
        pred = result.estimator.predict(X_test)
        return float(np.mean(pred[y_test == 0] == 0))

    plain, balanced = minority_recall(None), minority_recall("balanced")
    assert balanced >= plain
    assert balanced > 0.9


def test_calibrated_svm_has_probabilities(digits):
    X_train, X_test, y_train, y_test = digits
    result = train(
        X_train, y_train, classifier="svm", penalty="l2", cv=3, Cs=(0.01, 0.1), calibrate=True
    )
    assert isinstance(result.estimator.named_steps["clf"], CalibratedClassifierCV)
    pred, proba = predict_scores(result.estimator, X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert (proba >= 0).all()
    np.testing.assert_array_equal(pred, result.estimator.predict(X_test))
    assert np.mean(pred == y_test) > 0.9
    assert result.candidates[0].n_nonzero_weights > 0


def test_uncalibrated_svm_scores_are_decision_values(cancer):
    X, y = cancer
    pipe = make_pipeline("svm", "l2", C=0.1).fit(X, y)
    assert not hasattr(pipe, "predict_proba")
    pred, scores = predict_scores(pipe, X)
    assert scores.shape == (len(X),)  # binary: one margin per row
    np.testing.assert_array_equal(pred, (scores > 0).astype(int))
    # calibrate is a no-op for logistic regression, which has probabilities.
    logreg = make_pipeline("logreg", "l2", calibrate=True)
    assert isinstance(logreg.named_steps["clf"], LogisticRegression)


def test_calibration_needs_two_examples_per_fold(digits):
    X_train, _, y_train, _ = digits
    keep = np.r_[np.flatnonzero(y_train != 9), np.flatnonzero(y_train == 9)[:2]]
    with pytest.raises(ValueError, match="calibrate=True"):
        train(X_train[keep], y_train[keep], classifier="svm", cv=2, calibrate=True)


# --------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------


def test_error_single_class(cancer):
    X, y = cancer
    with pytest.raises(ValueError, match="at least 2 classes"):
        train(X[y == 1], y[y == 1], cv=3)


def test_error_small_class_names_it_and_suggests_cv(digits, digit_names):
    X_train, _, y_train, _ = digits
    keep = np.r_[np.flatnonzero(y_train != 7), np.flatnonzero(y_train == 7)[:2]]
    names = [f"digit-{n}" for n in digit_names]
    with pytest.raises(ValueError) as info:
        train(X_train[keep], y_train[keep], cv=5, label_names=names)
    msg = str(info.value)
    assert "'digit-7'" in msg and "has 2" in msg and "--cv" in msg and "cv=5" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_non_finite_features(digits, bad):
    X_train, _, y_train, _ = digits
    X = X_train.copy()
    X[17, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or infinity in 1 of .* rows \(first: row 17\)"):
        train(X, y_train, cv=3)


def test_error_length_mismatch(digits):
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match="different lengths"):
        train(X_train, y_train[:-1], cv=3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"classifier": "forest"}, r"unknown classifier 'forest'; expected one of 'logreg', 'svm', 'all'"),
        ({"penalty": "elasticnet"}, r"unknown penalty 'elasticnet'; expected one of 'l1', 'l2', 'all'"),
        ({"cv": 1}, "cv must be an integer >= 2"),
        ({"Cs": []}, "Cs must be a non-empty"),
        ({"Cs": [0.1, -1.0]}, "Cs must be positive"),
        ({"scoring": "accuracyy"}, "unknown scoring 'accuracyy'"),
        ({"class_weight": "auto"}, "unknown class_weight 'auto'"),
    ],
)
def test_error_bad_options(digits, kwargs, match):
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match=match):
        train(X_train, y_train, **kwargs)


def test_make_pipeline_validates():
    with pytest.raises(ValueError, match=r"expected one of 'logreg', 'svm'"):
        make_pipeline("knn", "l2")
    with pytest.raises(ValueError, match=r"expected one of 'l1', 'l2'"):
        make_pipeline("svm", "all")
    with pytest.raises(ValueError, match="C must be a positive"):
        make_pipeline("svm", "l2", C=0.0)


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------

FINGERPRINT = {"backbone": "mobilenet_0.25", "weights_sha256": "dbdb03ee", "image_size": (224, 224)}


def _fitted(cancer, digits, classifier, penalty, **kwargs):
    if kwargs.pop("multiclass", False):
        X_train, _, y_train, _ = digits
        return make_pipeline(classifier, penalty, C=0.1, **kwargs).fit(X_train, y_train), 10
    X, y = cancer
    return make_pipeline(classifier, penalty, C=0.1, **kwargs).fit(X, y), 2


VARIANTS = [
    ("logreg", "l2", {}),
    ("logreg", "l1", {}),
    ("svm", "l2", {}),
    ("svm", "l1", {}),
    ("svm", "l2", {"calibrate": True}),
    ("svm", "l1", {"calibrate": True, "multiclass": True}),
    ("logreg", "l2", {"class_weight": "balanced", "multiclass": True}),
    ("logreg", "l1", {"class_weight": {0: 2.0, 1: 1.0}}),
]


@pytest.mark.parametrize("classifier,penalty,kwargs", VARIANTS)
def test_save_load_round_trip(tmp_path, cancer, digits, classifier, penalty, kwargs):
    pipe, n_classes = _fitted(cancer, digits, classifier, penalty, **dict(kwargs))
    X = digits[1] if n_classes == 10 else cancer[0]
    names = [f"class {i}" for i in range(n_classes)]
    info = {
        "name": f"{classifier}-{penalty}",
        "candidates": [CandidateResult(classifier, penalty, 0.1, np.float64(0.95), 0.01, 1.5, np.int64(42))],
        "store": Path("/data/train.h5"),
        "n_train": np.int64(100),
        "class_counts": np.array([50, 50]),
        "featx_version": "0.1.0",
        "nested": {"ok": [1, 2.5, None, True]},
    }
    path = tmp_path / "model.skops"
    save_classifier(path, pipe, fingerprint=FINGERPRINT, label_names=names, info=info)
    assert os.listdir(tmp_path) == ["model.skops"]  # no temp file left behind

    loaded = load_classifier(path)
    assert isinstance(loaded, SavedClassifier)
    np.testing.assert_array_equal(loaded.estimator.predict(X), pipe.predict(X))
    _, expected_scores = predict_scores(pipe, X)
    _, loaded_scores = predict_scores(loaded.estimator, X)
    np.testing.assert_array_equal(loaded_scores, expected_scores)
    assert loaded.label_names == names
    assert loaded.fingerprint == {**FINGERPRINT, "image_size": [224, 224]}
    assert loaded.info == {
        "name": f"{classifier}-{penalty}",
        "candidates": [
            {"classifier": classifier, "penalty": penalty, "best_C": 0.1, "cv_score_mean": 0.95,
             "cv_score_std": 0.01, "fit_seconds": 1.5, "n_nonzero_weights": 42}
        ],
        "store": "/data/train.h5",
        "n_train": 100,
        "class_counts": [50, 50],
        "featx_version": "0.1.0",
        "nested": {"ok": [1, 2.5, None, True]},
    }
    check_fingerprint(loaded.fingerprint, FINGERPRINT, what="the store")


def test_save_overwrites_atomically(tmp_path, cancer, digits):
    pipe, _ = _fitted(cancer, digits, "logreg", "l2")
    path = tmp_path / "model.skops"
    path.write_bytes(b"old contents")
    save_classifier(path, pipe, fingerprint={}, label_names=["a", "b"], info={})
    assert load_classifier(path).label_names == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["model.skops"]


def test_save_refuses_what_load_would_refuse(tmp_path, cancer):
    X, y = cancer
    knn = Pipeline([("scale", StandardScaler()), ("clf", KNeighborsClassifier())]).fit(X, y)
    with pytest.raises(ValueError, match="KNeighborsClassifier"):
        save_classifier(tmp_path / "m.skops", knn, fingerprint={}, label_names=["a", "b"], info={})
    assert os.listdir(tmp_path) == []


def test_save_validates_metadata(tmp_path, cancer, digits):
    pipe, _ = _fitted(cancer, digits, "logreg", "l2")
    with pytest.raises(ValueError, match="JSON-able"):
        save_classifier(tmp_path / "m.skops", pipe, fingerprint={}, label_names=["a", "b"], info={"x": object()})
    with pytest.raises(ValueError, match="label names"):
        save_classifier(tmp_path / "m.skops", pipe, fingerprint={}, label_names=["only one"], info={})
    with pytest.raises(TypeError, match="Pipeline"):
        save_classifier(tmp_path / "m.skops", pipe[-1], fingerprint={}, label_names=["a", "b"], info={})
    assert os.listdir(tmp_path) == []


# -- hostile files ----------------------------------------------------------

EXECUTED: list[str] = []


class Payload:
    """Stands in for attacker code: any construction of it is recorded."""

    def __init__(self):
        self.command = "touch /tmp/pwned"

    def __setstate__(self, state):
        EXECUTED.append("__setstate__")
        self.__dict__.update(state)


def _payload_dict(estimator):
    return {
        "format": linear.FILE_FORMAT,
        "format_version": linear.FILE_FORMAT_VERSION,
        "estimator": estimator,
        "metadata": json.dumps({"fingerprint": {}, "label_names": ["a", "b"], "info": {}}),
    }


def test_custom_class_payload_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.skops"
    sio.dump(_payload_dict(Payload()), path)
    EXECUTED.clear()

    with pytest.raises(UnsafeModelError) as info:
        load_classifier(path)
    assert EXECUTED == []
    assert any(t.endswith(".Payload") for t in info.value.untrusted)
    assert "Payload" in str(info.value)

    # The planted object is live: skops would run its code if told to trust it.
    sio.load(path, trusted=[f"{Payload.__module__}.Payload"])
    assert EXECUTED == ["__setstate__"]
    EXECUTED.clear()


def _rewrite_schema(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "schema.json":
                schema = json.loads(data)
                edit(schema)
                data = json.dumps(schema).encode()
            zout.writestr(item, data)


@pytest.mark.parametrize(
    "node,expected",
    [
        ({"__class__": "eval", "__module__": "builtins", "__loader__": "FunctionNode"}, "builtins.eval"),
        ({"__class__": "system", "__module__": "os", "__loader__": "FunctionNode"}, "os.system"),
        (
            {"__class__": "Popen", "__module__": "subprocess", "__loader__": "ObjectNode",
             "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                         "content": {}, "key_types": {"__class__": "list", "__module__": "builtins",
                                                      "__loader__": "ListNode", "content": []}}},
            "subprocess.Popen",
        ),
    ],
)
def test_schema_naming_dangerous_callable_is_refused(tmp_path, monkeypatch, cancer, digits, node, expected):
    pipe, _ = _fitted(cancer, digits, "logreg", "l2")
    good = tmp_path / "good.skops"
    save_classifier(good, pipe, fingerprint={}, label_names=["a", "b"], info={})

    def plant(schema):
        # Swap the scaler for the payload: a loader that built the tree would
        # import and call it while constructing the pipeline.
        steps = schema["content"]["estimator"]["content"]["content"]["steps"]["content"]
        steps[0]["content"][1] = node

    evil = tmp_path / "evil.skops"
    _rewrite_schema(good, evil, plant)
    assert expected in sio.get_untrusted_types(file=evil)

    def must_not_load(*args, **kwargs):
        raise AssertionError("skops.io.load reached with an untrusted file")

    monkeypatch.setattr(linear_files.sio, "load", must_not_load)
    monkeypatch.setattr(linear_files.sio, "loads", must_not_load)
    with pytest.raises(UnsafeModelError) as info:
        load_classifier(evil)
    assert expected in info.value.untrusted
    assert expected in str(info.value)


def test_sklearn_type_outside_featx_list_is_refused(tmp_path, cancer):
    # skops trusts every sklearn estimator by default; featx trusts only what
    # it writes.
    X, y = cancer
    knn = Pipeline([("scale", StandardScaler()), ("clf", KNeighborsClassifier())]).fit(X, y)
    path = tmp_path / "knn.skops"
    sio.dump(_payload_dict(knn), path)
    assert sio.get_untrusted_types(file=path) == []
    with pytest.raises(UnsafeModelError, match="KNeighborsClassifier"):
        load_classifier(path)


def test_trusted_types_are_fully_qualified():
    assert len(set(TRUSTED_TYPES)) == len(TRUSTED_TYPES)
    for name in TRUSTED_TYPES:
        assert name.split(".")[0] in {"builtins", "numpy", "sklearn"}, name
    assert not any("eval" in t or "os." in t or "subprocess" in t for t in TRUSTED_TYPES)


# -- not a classifier file --------------------------------------------------


def test_random_bytes_are_not_a_model(tmp_path):
    path = tmp_path / "noise.skops"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match="not a featx classifier file"):
        load_classifier(path)


def test_pickle_file_is_not_loaded(tmp_path, cancer, digits):
    pipe, _ = _fitted(cancer, digits, "logreg", "l2")
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(pipe))
    with pytest.raises(ModelFileError, match="pickle"):
        load_classifier(path)


def test_truncated_file_is_corrupt(tmp_path, cancer, digits):
    pipe, _ = _fitted(cancer, digits, "logreg", "l2")
    good = tmp_path / "good.skops"
    save_classifier(good, pipe, fingerprint={}, label_names=["a", "b"], info={})
    bad = tmp_path / "bad.skops"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_classifier(bad)


def test_zip_without_schema_is_corrupt(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ModelFileError, match="schema.json"):
        load_classifier(path)


def test_garbled_schema_is_corrupt(tmp_path):
    path = tmp_path / "garbled.skops"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("schema.json", "{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        load_classifier(path)


def test_other_skops_file_is_not_a_classifier(tmp_path):
    path = tmp_path / "dict.skops"
    sio.dump({"a": [1, 2, 3]}, path)
    with pytest.raises(ModelFileError, match="not a featx classifier"):
        load_classifier(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "nope.skops")


# --------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------


def test_check_fingerprint_accepts_equal_values():
    check_fingerprint(FINGERPRINT, {**FINGERPRINT, "image_size": [224, 224]}, what="store")


def test_fingerprint_mismatch_is_one_class_wherever_it_is_imported_from():
    import featx.errors
    import featx.linear.files
    import featx.store
    import featx.store.errors

    assert (FingerprintMismatch is featx.errors.FingerprintMismatch is featx.store.FingerprintMismatch
            is featx.store.errors.FingerprintMismatch is featx.linear.files.FingerprintMismatch)
    assert featx.store.StoreError is featx.errors.StoreError
    # the classifier side's mismatch is caught as a store error too, and the store side's as a ValueError
    with pytest.raises(featx.store.StoreError):
        check_fingerprint(FINGERPRINT, {**FINGERPRINT, "pooling": "max"}, what="store")
    assert issubclass(featx.store.FingerprintMismatch, ValueError)


def test_check_fingerprint_lists_differing_keys():
    other = {**FINGERPRINT, "weights_sha256": "abc123", "pooling": "avg"}
    with pytest.raises(FingerprintMismatch) as info:
        check_fingerprint(FINGERPRINT, other, what="feature store 'val.h5'")
    err = info.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "feature store 'val.h5'" in msg
    assert "weights_sha256: expected 'dbdb03ee', got 'abc123'" in msg
    assert "pooling: expected '<missing>', got 'avg'" in msg
    assert "backbone:" not in msg and "image_size:" not in msg
    assert set(err.differences) == {"weights_sha256", "pooling"}
