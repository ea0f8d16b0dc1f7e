"""Metrics, text reports and confusion-matrix figures for one model on one split.

:func:`evaluate` gives every score of one set of predictions, with 95% intervals of accuracy (Wilson)
and macro F1 (stratified bootstrap) from :mod:`featx.stats`; :func:`format_report` prints it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from featx import stats

__all__ = ["evaluate", "format_interval", "format_report", "format_table", "most_confidently_wrong",
           "save_confusion_png"]

BOOTSTRAP_RESAMPLES = 1000  # macro F1 interval: Monte Carlo error of its ends well under 0.01


def _as_label_indices(values: Any, n_labels: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # Accept integral floats (e.g. labels read back from HDF5), nothing else.
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"{what} must hold integer indices into label_names, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_labels):
        bad = arr[(arr < 0) | (arr >= n_labels)][0]
        raise ValueError(f"{what} contains label {int(bad)}, outside 0..{n_labels - 1} (label_names)")
    return arr.astype(np.int64, copy=False)


def _positive_scores(y_score: Any, n: int) -> np.ndarray:
    """Scores of class 1 from probabilities (n, 2) or decision values (n,)."""
    scores = np.asarray(y_score, dtype=float)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    elif scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1 or scores.shape[0] != n:
        raise ValueError(
            f"y_score must have shape (n,) or (n, 2) for a binary problem, got {np.shape(y_score)} "
            f"for n={n}"
        )
    return scores


def _checked_labels(y_true: Any, y_pred: Any, label_names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both label arrays as int64 indices into the (validated) class names, or a clear ValueError."""
    label_names = [str(n) for n in label_names]
    k = len(label_names)
    if k == 0:
        raise ValueError("label_names is empty")
    if len(set(label_names)) != k:
        raise ValueError("label_names contains duplicates")
    y_true = _as_label_indices(y_true, k, "y_true")
    y_pred = _as_label_indices(y_pred, k, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot evaluate zero predictions")
    return y_true, y_pred, label_names


def _intervals(y_true: np.ndarray, y_pred: np.ndarray, confidence: float, seed: int) -> dict:
    """``accuracy_ci`` (Wilson) and ``macro_f1_ci`` (stratified bootstrap), each naming its method."""
    n, correct = int(y_true.size), int(np.sum(y_true == y_pred))
    acc_low, acc_high = stats.wilson_interval(correct, n, confidence)
    f1_low, f1_high = stats.bootstrap_interval(y_true, y_pred, stats.macro_f1, confidence=confidence,
                                               n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    return {
        "accuracy_ci": {"low": acc_low, "high": acc_high, "confidence": confidence, "method": "Wilson score"},
        "macro_f1_ci": {"low": f1_low, "high": f1_high, "confidence": confidence,
                        "method": f"stratified bootstrap, {BOOTSTRAP_RESAMPLES} resamples, percentile, seed {seed}"},
    }


def evaluate(
    y_true: Any, y_pred: Any, *, label_names: list[str], y_score: Any = None,
    confidence: float | None = stats.CONFIDENCE, seed: int = 0,
) -> dict:
    """Metrics of one set of predictions, as a JSON-able dict.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        Integer indices into ``label_names``.
    label_names : list of str
        Class names; the confusion matrix and ``per_class`` follow this order
        and include classes that occur in neither array.
    y_score : array-like, optional
        Scores for ROC-AUC, binary problems only: probabilities (n, 2) or
        decision values (n,), larger meaning class 1.
    confidence : float or None
        Level of the intervals ``accuracy_ci`` and ``macro_f1_ci`` (None: leave them out).
    seed : int
        Seed of the bootstrap behind ``macro_f1_ci`` (same input, same interval).

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, macro ``precision``/``recall``/
        ``f1`` (averaged, as sklearn does, over the classes present in
        ``y_true`` or ``y_pred``), ``per_class`` {name: {precision, recall, f1,
        support}}, ``confusion_matrix`` (rows true, columns predicted),
        ``labels``, ``n``, ``roc_auc`` (None unless binary with scores and
        both classes present) and ``accuracy_ci`` / ``macro_f1_ci`` ({low, high,
        confidence, method}: see featx.stats). Undefined ratios count as 0, without warnings.
    """
    y_true, y_pred, label_names = _checked_labels(y_true, y_pred, label_names)
    n, labels = int(y_true.size), np.arange(len(label_names))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    # Balanced accuracy from the matrix (mean recall over classes present in
    # y_true): identical to sklearn's, minus its warning when y_pred has a
    # class that y_true lacks.
    row_totals = cm.sum(axis=1)
    present = row_totals > 0
    balanced = float(np.mean(np.diag(cm)[present] / row_totals[present]))
    roc_auc = None
    if y_score is not None and len(label_names) == 2 and present.all():
        roc_auc = float(roc_auc_score(y_true, _positive_scores(y_score, n)))
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(label_names)}
    result = {
        "n": n, "labels": label_names, "accuracy": float(np.trace(cm) / n), "balanced_accuracy": balanced,
        "precision": float(macro_p), "recall": float(macro_r), "f1": float(macro_f1), "roc_auc": roc_auc,
        "per_class": per_class, "confusion_matrix": cm.astype(int).tolist(),
    }
    if confidence is not None:
        result.update(_intervals(y_true, y_pred, confidence, seed))
    return result


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def _format_cell(value: Any, unit_interval: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        # Scores and rates get fixed decimals so a column reads evenly;
        # anything else (C, seconds) 4 significant digits.
        return f"{value:.4f}" if unit_interval else f"{value:.4g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned text table of ``rows`` (dicts) restricted to ``columns``.

    Numbers are right-aligned, text left-aligned. Float columns whose values
    all lie in [0, 1] (scores) get 4 decimals, other floats 4 significant
    digits; a missing key or None shows as ``-``.
    """
    columns = list(columns)
    unit = [
        all(
            not isinstance(row.get(col), (float, np.floating)) or 0.0 <= row[col] <= 1.0
            for row in rows
        )
        for col in columns
    ]
    cells = [[_format_cell(row.get(col), u) for col, u in zip(columns, unit)] for row in rows]
    numeric = [
        any(_is_number(row.get(col)) for row in rows)
        and all(row.get(col) is None or _is_number(row.get(col)) for row in rows)
        for col in columns
    ]
    widths = [
        max([len(col)] + [len(r[j]) for r in cells]) for j, col in enumerate(columns)
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _format_confusion(cm: list[list[int]], names: list[str]) -> str:
    # Short names head the columns directly; long ones would make the matrix
    # unreadable, so the columns then use class numbers that the rows spell out.
    short = all(len(n) <= 12 for n in names)
    col_heads = names if short else [str(i) for i in range(len(names))]
    row_heads = names if short else [f"{i} {n}" for i, n in enumerate(names)]
    width = max([len(h) for h in col_heads] + [len(str(v)) for row in cm for v in row])
    row_w = max(len(h) for h in row_heads)
    lines = [" " * row_w + "  " + " ".join(h.rjust(width) for h in col_heads)]
    for head, row in zip(row_heads, cm):
        lines.append(head.ljust(row_w) + "  " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def format_interval(ci: dict, digits: int = 3) -> str:
    """An interval of featx.stats as "[low, high]".

    >>> format_interval({"low": 0.91234, "high": 0.9561})
    '[0.912, 0.956]'
    """
    return f"[{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def format_report(result: dict, *, title: str | None = None) -> str:
    """Readable terminal report of an :func:`evaluate` result."""
    lines: list[str] = []
    if title:
        lines += [title, "=" * len(title)]
    headline = [
        ("accuracy", result["accuracy"], result.get("accuracy_ci")),
        ("balanced accuracy", result["balanced_accuracy"], None),
        ("precision (macro)", result["precision"], None),
        ("recall (macro)", result["recall"], None),
        ("f1 (macro)", result["f1"], result.get("macro_f1_ci")),
    ]
    if result.get("roc_auc") is not None:
        headline.append(("ROC-AUC", result["roc_auc"], None))
    width = max(len(k) for k, _, _ in headline)
    lines.append(f"{'examples'.ljust(width)}  {result['n']}")
    lines += [f"{k.ljust(width)}  {v:.4f}" + (f"  {format_interval(ci)}" if ci else "") for k, v, ci in headline]
    intervals = [f"{name} {ci['method']}" for name, ci in (("accuracy:", result.get("accuracy_ci")),
                                                           ("f1:", result.get("macro_f1_ci"))) if ci]
    if intervals:
        level = result.get("accuracy_ci", result.get("macro_f1_ci"))["confidence"]
        lines.append(f"[{level:.0%} intervals; {'; '.join(intervals)}]")

    lines += ["", "per class:"]
    rows = [{"class": name, **vals} for name, vals in result["per_class"].items()]
    lines.append(format_table(rows, ["class", "precision", "recall", "f1", "support"]))

    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    lines.append(_format_confusion(result["confusion_matrix"], list(result["labels"])))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def save_confusion_png(result: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Write the confusion matrix of an :func:`evaluate` result as a PNG.

    Cells show counts; colours show the fraction of each true class (row
    normalised), so small classes stay readable next to large ones.
    """
    # Figure + Agg canvas directly, not pyplot: no display needed, no global
    # backend switch, no figure left registered in pyplot's state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(result["confusion_matrix"], dtype=np.int64)
    names = [str(n) for n in result["labels"]]
    k = len(names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion_matrix shape {cm.shape} does not match {k} labels")
    totals = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)

    # Grow with the number of classes and the longest name (tick labels).
    longest = max(len(n) for n in names)
    side = min(3.0 + 0.45 * k + 0.07 * longest, 24.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class")

    ticks = np.arange(k)
    tick_size = max(5.0, min(10.0, 160.0 / max(k, 1)))
    ax.set_xticks(ticks, labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(ticks, labels=names, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix (n = {int(cm.sum())})")

    count_size = max(4.0, min(10.0, 200.0 / max(k, 1)))
    for i in range(k):
        for j in range(k):
            # White text on dark cells, black on light ones.
            colour = "white" if fraction[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=count_size)

    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=120, bbox_inches="tight")


CONFIDENCE_KINDS = ("probability", "margin")


def most_confidently_wrong(
    paths: list[str], y_true: Any, y_pred: Any, confidence: Any, label_names: list[str], *, k: int = 12,
    confidence_kind: str = "probability",
) -> list[dict]:
    """The `k` misclassified images with the highest confidence, most confident first.

    ``confidence`` is whatever the model ranks by, and ``confidence_kind`` says which it is
    ("probability" of the predicted class, or an SVM decision "margin"), so a report can label
    the number; ties keep input order so the list is deterministic.

    >>> most_confidently_wrong(["a", "b", "c"], [0, 1, 1], [1, 1, 0], [0.6, 0.9, 0.8], ["cat", "dog"])[0]
    {'path': 'c', 'true': 'dog', 'pred': 'cat', 'confidence': 0.8, 'confidence_kind': 'probability'}
    """
    if confidence_kind not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence_kind must be one of {CONFIDENCE_KINDS}, got {confidence_kind!r}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confidence = np.asarray(confidence, dtype=float)
    wrong = np.flatnonzero(y_true != y_pred)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    return [{"path": str(paths[i]), "true": label_names[int(y_true[i])], "pred": label_names[int(y_pred[i])],
             "confidence": float(confidence[i]), "confidence_kind": confidence_kind} for i in order]
