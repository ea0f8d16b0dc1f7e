"""Tests for featx.metrics."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx.metrics import evaluate, format_report, format_table, most_confidently_wrong, save_confusion_png
from featx.stats import wilson_interval


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # evaluate() promises zero_division handling without warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture(scope="module")
def digits_predictions():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=0.3, stratify=y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000)).fit(X_train, y_train)
    return y_test, model.predict(X_test)


@pytest.fixture(scope="module")
def cancer_scores():
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, train_size=0.5, stratify=y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    return y_test, model.predict(X_test), model.predict_proba(X_test), model.decision_function(X_test)


DIGIT_NAMES = [f"digit {i}" for i in range(10)]


def test_values_equal_sklearn(digits_predictions):
    y_true, y_pred = digits_predictions
    result = evaluate(y_true, y_pred, label_names=DIGIT_NAMES)

    assert result["n"] == len(y_true)
    assert result["labels"] == DIGIT_NAMES
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro")
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((p, r, f))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None)
    for i, name in enumerate(DIGIT_NAMES):
        row = result["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
    assert result["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert result["roc_auc"] is None  # multiclass
    assert 0.8 < result["accuracy"] < 1.0  # a real, imperfect model
    json.dumps(result, allow_nan=False)


def test_hand_computed_case():
    # true: a a b b c ; pred: a b b b a
    result = evaluate([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], label_names=["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    # c is never predicted: precision 0/0 counts as 0, without a warning.
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_includes_absent_labels():
    names = ["cat", "dog", "bird", "fish", "frog"]
    # fish occurs nowhere; frog is predicted but never true.
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 4]
    result = evaluate(y_true, y_pred, label_names=names)
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=range(5)))
    assert cm[3].sum() == 0 and cm[:, 3].sum() == 0
    assert cm[2, 4] == 1
    assert list(result["per_class"]) == names
    assert result["per_class"]["fish"]["support"] == 0
    assert result["per_class"]["frog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Balanced accuracy averages over the classes that occur in y_true only.
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_roc_auc_binary_from_probabilities_and_margins(cancer_scores):
    y_true, y_pred, proba, margin = cancer_scores
    names = ["malignant", "benign"]
    expected = roc_auc_score(y_true, proba[:, 1])
    from_proba = evaluate(y_true, y_pred, label_names=names, y_score=proba)
    from_margin = evaluate(y_true, y_pred, label_names=names, y_score=margin)
    assert from_proba["roc_auc"] == pytest.approx(expected)
    assert from_margin["roc_auc"] == pytest.approx(expected)
    assert 0.95 < expected <= 1.0
    assert evaluate(y_true, y_pred, label_names=names)["roc_auc"] is None


def test_roc_auc_none_for_multiclass_and_single_class():
    scores = np.full((4, 3), 1 / 3)
    assert evaluate([0, 1, 2, 2], [0, 1, 2, 1], label_names=["a", "b", "c"], y_score=scores)["roc_auc"] is None
    # Binary labels but only one class in y_true: AUC undefined -> None, no warning.
    assert evaluate([1, 1, 1], [1, 0, 1], label_names=["a", "b"], y_score=[0.9, 0.2, 0.8])["roc_auc"] is None


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        evaluate([0, 1], [0], label_names=["a", "b"])
    with pytest.raises(ValueError, match="outside 0..1"):
        evaluate([0, 2], [0, 1], label_names=["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        evaluate([0, 1], [0, 1], label_names=["a", "b"], y_score=[[0.1, 0.2, 0.7]] * 2)


def test_format_report_contains_names_and_metrics(digits_predictions):
    y_true, y_pred = digits_predictions
    result = evaluate(y_true, y_pred, label_names=DIGIT_NAMES)
    text = format_report(result, title="test split")
    assert text.startswith("test split\n==========")
    assert f"accuracy           {result['accuracy']:.4f}" in text
    assert "ROC-AUC" not in text
    for name in DIGIT_NAMES:
        assert name in text
    assert "confusion matrix" in text
    # Each matrix row ends with that true class's counts, in label order.
    lines = text.splitlines()
    matrix_start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    for i, counts in enumerate(result["confusion_matrix"]):
        assert lines[matrix_start + 2 + i].split()[-10:] == [str(c) for c in counts]


def test_evaluate_carries_named_95_percent_intervals_as_strict_json(digits_predictions):
    y_true, y_pred = digits_predictions
    result = json.loads(json.dumps(evaluate(y_true, y_pred, label_names=DIGIT_NAMES), allow_nan=False))
    acc, f1 = result["accuracy_ci"], result["macro_f1_ci"]
    assert (acc["low"], acc["high"]) == pytest.approx(wilson_interval(int(np.sum(y_true == y_pred)), len(y_true)))
    assert acc["method"] == "Wilson score" and acc["confidence"] == f1["confidence"] == 0.95
    assert f1["method"].startswith("stratified bootstrap, 1000 resamples")
    for ci, value in ((acc, result["accuracy"]), (f1, result["f1"])):
        assert ci["low"] < value < ci["high"] and ci["high"] - ci["low"] < 0.15  # 1,258 test digits
    # fewer images, a wider interval; seeded, so the same predictions give the same interval
    few = evaluate(y_true[:60], y_pred[:60], label_names=DIGIT_NAMES)
    assert few["accuracy_ci"]["high"] - few["accuracy_ci"]["low"] > acc["high"] - acc["low"]
    assert evaluate(y_true, y_pred, label_names=DIGIT_NAMES)["macro_f1_ci"] == f1
    assert "accuracy_ci" not in evaluate(y_true, y_pred, label_names=DIGIT_NAMES, confidence=None)
    text = format_report(result)
    assert f"accuracy           {result['accuracy']:.4f}  [{acc['low']:.3f}, {acc['high']:.3f}]" in text
    assert f"[{f1['low']:.3f}, {f1['high']:.3f}]" in text and "Wilson score" in text


def test_most_confidently_wrong_says_what_its_number_is():
    wrong = most_confidently_wrong(["a", "b"], [0, 1], [1, 0], [2.5, 0.3], ["cat", "dog"], confidence_kind="margin")
    assert [w["path"] for w in wrong] == ["a", "b"] and {w["confidence_kind"] for w in wrong} == {"margin"}
    with pytest.raises(ValueError, match="confidence_kind"):
        most_confidently_wrong(["a"], [0], [1], [0.5], ["cat", "dog"], confidence_kind="logit")


def test_format_report_shows_roc_auc_for_binary(cancer_scores):
    y_true, y_pred, proba, _ = cancer_scores
    result = evaluate(y_true, y_pred, label_names=["malignant", "benign"], y_score=proba)
    text = format_report(result)
    assert f"ROC-AUC            {result['roc_auc']:.4f}" in text
    assert "malignant" in text and "benign" in text


def test_format_table_aligns_columns():
    rows = [
        {"name": "logreg-l2", "best_C": 0.0001, "cv_score_mean": 0.96503, "n_nonzero_weights": 600},
        {"name": "svm-l1", "best_C": 100.0, "cv_score_mean": 0.9, "n_nonzero_weights": None},
    ]
    text = format_table(rows, ["name", "best_C", "cv_score_mean", "n_nonzero_weights"])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "best_C", "cv_score_mean", "n_nonzero_weights"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["logreg-l2", "0.0001", "0.9650", "600"]
    assert lines[3].split() == ["svm-l1", "100", "0.9000", "-"]
    # Numbers are right-aligned: their last characters line up with the header's.
    assert len(lines[0]) == len(lines[2]) == len(lines[3])


def test_save_confusion_png(tmp_path, digits_predictions):
    y_true, y_pred = digits_predictions
    result = evaluate(y_true, y_pred, label_names=DIGIT_NAMES)
    path = tmp_path / "cm.png"
    save_confusion_png(result, path, title="digits, held-out")
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] > 300 and img.size[1] > 300
        img.verify()


def test_save_confusion_png_leaves_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    result = evaluate([0, 1, 1], [0, 1, 0], label_names=["a very long class name", "b"])
    save_confusion_png(result, tmp_path / "small.png")
    assert plt.get_fignums() == []
    assert matplotlib.get_backend() == backend
    with Image.open(tmp_path / "small.png") as img:
        assert img.format == "PNG"
