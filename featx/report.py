"""The comparison report: feature transfer vs fine-tuning, as JSON, Markdown and one HTML file.

``featx compare`` evaluates several models on one held-out split and hands the results to
:func:`write_report`, which writes ``report.json`` (the data, plus the computed verdict),
``report.md`` (images linked from ``assets/``) and ``report.html`` (self-contained: every image
inlined as a ``data:`` URI, inline CSS, no scripts, no external URLs). :func:`embedding_2d`
computes the 2-D map of the eval split's features that the report plots, and
:func:`compute_verdict` the one-line answer shown at the top.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["compute_verdict", "embedding_2d", "write_report"]

THUMBNAIL_SIZE = 160  # px, longest side of the "confidently wrong" thumbnails
MAX_WRONG = 12  # thumbnails shown per model
MAX_SKIPPED_ROWS = 1000  # rows of the skipped-files table in md/html (all of them stay in the JSON)
TIE_POINTS = 0.05  # |delta| below this rounds to 0.0 points: reported as a tie
DASH = "\u2013"  # shown for a value that does not apply (ROC-AUC of a multi-class problem, ...)

# The report has no scripts and fetches nothing: only inline styles and data: images are allowed,
# so a browser opening it never touches the network (and a class name that slipped through
# escaping could not run anything).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# --------------------------------------------------------------------------------------------
# Embedding map


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``x`` on its first ``k`` principal components, and their variance ratios.

    Eigen-decomposition of the smaller Gram matrix (d x d, or n x n when n < d) rather than an
    SVD of the data: several times faster on 2,000 x 1,280 features and exact enough for a
    picture. Deterministic (signs fixed as sklearn's svd_flip does: the largest loading of each
    component is positive) and quiet on degenerate input (one row, one column, no variance).
    Components beyond the rank are zeros, so the result always has ``k`` columns.
    """
    n, d = x.shape
    scores = np.zeros((n, k))
    ratios = np.zeros(k)
    if n == 0 or d == 0 or np.all(x == x[0]):
        return scores, ratios  # no variance at all: every point at the origin
    centred = x - x.mean(axis=0)
    if d <= n:
        eigval, eigvec = np.linalg.eigh(centred.T @ centred)
        eigval, components = eigval[::-1], eigvec[:, ::-1]
    else:
        eigval, eigvec = np.linalg.eigh(centred @ centred.T)
        eigval, left = eigval[::-1], eigvec[:, ::-1]
        components = centred.T @ left  # unnormalised loadings: only their signs and ranks matter
    eigval = np.clip(eigval, 0.0, None)
    # Directions with (numerically) no variance carry only rounding noise: leave them at zero.
    m = int(min(k, np.count_nonzero(eigval > eigval[0] * 1e-12)))
    components = components[:, :m]
    biggest = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[biggest, np.arange(m)])
    signs[signs == 0] = 1.0
    if d <= n:
        scores[:, :m] = (centred @ components) * signs
    else:
        scores[:, :m] = left[:, :m] * np.sqrt(eigval[:m]) * signs
    ratios[:m] = eigval[:m] / eigval.sum()
    return scores, ratios


def _stratified_subsample(index: np.ndarray, labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` of ``index``, the same share of each class, seeded; sorted.

    Every class keeps at least one point (a class missing from the map would be misleading), so
    with more classes than ``max_points`` the result has one point per class.
    """
    if index.size <= max_points:
        return index
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * max_points / index.size
    take = np.minimum(np.maximum(np.floor(quota).astype(np.int64), 1), counts)
    left = max_points - int(take.sum())
    # Largest remainders get the points left over (ties: class order, via a stable sort) ...
    for c in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if left <= 0:
            break
        if take[c] < counts[c]:
            take[c] += 1
            left -= 1
    # ... and the one-per-class minimum is paid for by the largest classes.
    while left < 0 and take.max() > 1:
        take[int(np.argmax(take))] -= 1
        left += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(index[inverse == c], size=int(take[c]), replace=False) for c in range(classes.size)]
    return np.sort(np.concatenate(chosen))


def _round_sig(value: float, digits: int = 6) -> float:
    # 6 significant digits: plenty for a scatter plot, and a much smaller JSON.
    return float(f"{value:.{digits}g}")


def embedding_2d(
    features: Any,
    labels: Any,
    *,
    method: str = "auto",
    max_points: int = 2000,
    seed: int = 0,
    perplexity: float = 30.0,
) -> dict:
    """A 2-D map of ``features`` for a scatter plot coloured by class; deterministic for a seed.

    Parameters
    ----------
    features : array-like, shape (n, d) or (n,)
        One row per image (the eval split's features). Rows with NaN or infinity (images that
        could not be decoded) are left out.
    labels : array-like of int, shape (n,)
    method : {"auto", "pca", "tsne"}
        ``"auto"`` uses t-SNE when 10 <= n <= ``max_points`` and PCA otherwise. t-SNE
        (``sklearn.manifold.TSNE``, ``init="pca"``, seeded, single-threaded so that its sums
        always run in the same order) runs on the first 50 principal components; it falls back
        to PCA, with a ``"note"``, for fewer than 10 points or points that are all identical.
    max_points : int
        Larger sets are subsampled to this many points, stratified by class and seeded. t-SNE
        costs about O(n log n) on one core: some 10-30 s for 2,000 points.
    seed : int
    perplexity : float
        t-SNE perplexity, lowered to (n - 1) / 3 for small n.

    Returns
    -------
    dict
        ``method`` ("pca" or "tsne"), ``points`` [[x, y], ...], ``labels`` [int, ...],
        ``indices`` (row of each point in ``features``), ``n_total`` (rows given), ``n_points``,
        ``seed``; for PCA ``explained_variance`` (ratios of the two components), for t-SNE
        ``perplexity`` and ``pca_dims``; ``note`` when the method asked for could not be used.

    >>> rng = np.random.default_rng(0)
    >>> emb = embedding_2d(rng.normal(size=(8, 5)), [0, 1] * 4)
    >>> emb["method"], len(emb["points"]), emb["n_total"]
    ('pca', 8, 8)
    """
    if method not in ("auto", "pca", "tsne"):
        raise ValueError(f"method must be 'auto', 'pca' or 'tsne', got {method!r}")
    if int(max_points) < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    max_points = int(max_points)
    x = np.asarray(features)
    if x.dtype.kind not in "biuf":
        x = x.astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    y = np.asarray(labels).reshape(-1)
    if y.size != x.shape[0]:
        raise ValueError(f"features has {x.shape[0]} rows but labels has {y.size}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)

    n_total = int(x.shape[0])
    usable = np.flatnonzero(np.isfinite(x).all(axis=1)) if x.shape[1] else np.arange(n_total)
    index = _stratified_subsample(usable, y[usable], max_points, seed)
    # float64 only for the (at most max_points) rows kept, not for a whole large split
    xs, ys = x[index].astype(np.float64), y[index]
    n = int(index.size)

    note = None
    want_tsne = method == "tsne" or (method == "auto" and 10 <= usable.size <= max_points)
    reduced, ratios = _pca(xs, max(2, min(50, xs.shape[1])))
    if want_tsne and n < 10:
        note = f"t-SNE needs at least 10 points, got {n}: PCA instead"
        want_tsne = False
    elif want_tsne and not np.any(ratios > 0):
        note = "all points are identical: PCA instead of t-SNE"
        want_tsne = False

    result: dict[str, Any] = {"method": "tsne" if want_tsne else "pca"}
    if want_tsne:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perp = float(min(perplexity, (n - 1) / 3.0))
        # One thread: the Barnes-Hut gradient sums partial results across OpenMP threads in
        # whatever order they finish, which makes multi-threaded t-SNE differ run to run.
        with threadpool_limits(limits=1):
            points = TSNE(
                n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed
            ).fit_transform(reduced.astype(np.float32))
        result.update(perplexity=perp, pca_dims=int(reduced.shape[1]))
    else:
        points = reduced[:, :2]
        result["explained_variance"] = [_round_sig(float(r)) for r in ratios[:2]]
    result.update(
        points=[[_round_sig(a), _round_sig(b)] for a, b in np.asarray(points, dtype=np.float64).tolist()],
        labels=[int(v) for v in ys],
        indices=[int(i) for i in index],
        n_total=n_total,
        n_points=n,
        seed=int(seed),
    )
    if note:
        result["note"] = note
    return result


# --------------------------------------------------------------------------------------------
# Verdict


def _is_finetune(model: dict) -> bool:
    kind = str(model.get("kind") or "").strip().lower().replace("_", "-").replace(" ", "-")
    return kind in ("fine-tune", "finetune", "fine-tuned")


def _accuracy(model: dict) -> float | None:
    value = (model.get("metrics") or {}).get("accuracy")
    return _finite(value)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _best(models: list[dict]) -> dict | None:
    # Highest eval accuracy; ties keep the first in the list (compare's order).
    scored = [m for m in models if _accuracy(m) is not None]
    return max(scored, key=_accuracy) if scored else None


def _format_ratio(ratio: float) -> str:
    return f"{ratio:.0f}\u00d7" if ratio >= 10 else f"{ratio:.1f}\u00d7"


def compute_verdict(report: dict) -> dict:
    """The answer at a glance: best linear probe vs the fine-tuned model on the eval split.

    Returns ``best_probe``, ``best_probe_accuracy``, ``finetune``, ``finetune_accuracy``,
    ``delta_points`` (fine-tune minus probe, in percentage points, 1 decimal), ``winner``
    ("fine-tune", "feature transfer", "tie" or None), ``time_ratio`` (fine-tune training time
    over probe training plus feature extraction), ``headline``, ``text`` and ``warnings``.
    """
    models = [m for m in report.get("models") or [] if isinstance(m, dict)]
    probe = _best([m for m in models if not _is_finetune(m)])
    ft = _best([m for m in models if _is_finetune(m)])
    probe_acc = _accuracy(probe) if probe else None
    ft_acc = _accuracy(ft) if ft else None
    verdict: dict[str, Any] = {
        "best_probe": probe.get("name") if probe else None,
        "best_probe_accuracy": probe_acc,
        "finetune": ft.get("name") if ft else None,
        "finetune_accuracy": ft_acc,
        "delta_points": None,
        "winner": None,
        "time_ratio": None,
        "headline": "",
        "text": "",
        "warnings": [],
    }
    if (report.get("backbone") or {}).get("random_weights"):
        verdict["warnings"].append(
            "RANDOM WEIGHTS: the backbone was not pretrained, so these results say nothing about "
            "transfer learning."
        )

    if probe and ft:
        # + 0.0 turns a rounded -0.0 into 0.0, so a tie never reads "-0.0 points".
        delta = round((ft_acc - probe_acc) * 100.0, 1) + 0.0
        verdict["delta_points"] = delta
        ft_seconds = _finite(ft.get("train_seconds"))
        probe_seconds = _finite(probe.get("train_seconds")) or 0.0
        extraction = _finite((report.get("extraction") or {}).get("seconds")) or 0.0
        cost = ""
        if ft_seconds is not None and probe_seconds + extraction > 0:
            # The probe's cost includes the one-off feature extraction it needs; the fine-tune
            # decodes images itself, so its training time is its whole cost.
            ratio = ft_seconds / (probe_seconds + extraction)
            verdict["time_ratio"] = round(ratio, 2)
            cost = (
                f" at {_format_ratio(ratio)} the training time ({_seconds(ft_seconds)} s vs "
                f"{_seconds(probe_seconds + extraction)} s for feature extraction + probe training)"
            )
        if abs(delta) < TIE_POINTS:
            verdict["winner"] = "tie"
            verdict["headline"] = (
                f"Tie: fine-tuning and the linear probe {probe.get('name')} are equally accurate "
                f"({ft_acc:.3f})"
            )
        elif delta > 0:
            verdict["winner"] = "fine-tune"
            verdict["headline"] = f"Fine-tuning wins by {delta:.1f} points"
        else:
            verdict["winner"] = "feature transfer"
            verdict["headline"] = f"Linear probe {probe.get('name')} wins by {-delta:.1f} points"
        verdict["text"] = (
            f"Fine-tuning ({ft.get('name')}): {ft_acc:.3f} vs best linear probe {probe.get('name')} "
            f"{probe_acc:.3f} ({delta:+.1f} points){cost}."
        )
    elif probe:
        verdict["winner"] = "feature transfer"
        verdict["headline"] = f"Best linear probe: {probe.get('name')}, accuracy {probe_acc:.3f}"
        verdict["text"] = (
            f"Best linear probe {probe.get('name')}: accuracy {probe_acc:.3f}; no fine-tuned model "
            "in this comparison."
        )
    elif ft:
        verdict["winner"] = "fine-tune"
        verdict["headline"] = f"Fine-tuned model {ft.get('name')}: accuracy {ft_acc:.3f}"
        verdict["text"] = (
            f"Fine-tuned model {ft.get('name')}: accuracy {ft_acc:.3f}; no linear probe to compare with."
        )
    else:
        verdict["headline"] = "No model was evaluated"
        verdict["text"] = "No model with an accuracy on the eval split; nothing to compare."
    return verdict


# --------------------------------------------------------------------------------------------
# Plain JSON


def _plain(value: Any) -> Any:
    """A strict-JSON copy: numpy -> Python, tuples -> lists, paths -> str, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# Formatting


def _score(value: Any) -> str:
    value = _finite(value)
    return DASH if value is None else f"{value:.3f}"


def _seconds(value: Any) -> str:
    value = _finite(value)
    if value is None:
        return DASH
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _rate(value: Any) -> str:
    value = _finite(value)
    if value is None:
        return DASH
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _human_bytes(value: Any) -> str:
    """``12345`` -> ``"12.1 KiB"``; None -> a dash."""
    value = _finite(value)
    if value is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return slug[:40] or "model"


# (header, getter, formatter, better) for the summary table; better is "high", "low" or None
# (not highlighted: shared by every probe, or not comparable across models).
def _summary_columns(report: dict) -> list[tuple[str, Any, Any, str | None]]:
    extraction = (report.get("extraction") or {}).get("seconds")
    metric = lambda key: (lambda m: (m.get("metrics") or {}).get(key))  # noqa: E731
    return [
        ("accuracy", metric("accuracy"), _score, "high"),
        ("balanced acc.", metric("balanced_accuracy"), _score, "high"),
        ("precision", metric("precision"), _score, "high"),
        ("recall", metric("recall"), _score, "high"),
        ("F1", metric("f1"), _score, "high"),
        ("ROC-AUC", metric("roc_auc"), _score, "high"),
        ("CV score", lambda m: m.get("cv_score"), _score, None),
        ("extraction s", lambda m: None if _is_finetune(m) else extraction, _seconds, None),
        ("train s", lambda m: m.get("train_seconds"), _seconds, "low"),
        ("inference s", lambda m: m.get("inference_seconds"), _seconds, "low"),
        ("img/s", lambda m: m.get("inference_images_per_second"), _rate, "high"),
        ("size", lambda m: m.get("model_bytes"), _human_bytes, "low"),
    ]


def _summary_rows(report: dict) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Headers and rows of (text, is_best) cells of the model table."""
    models = report.get("models") or []
    columns = _summary_columns(report)
    best: list[set[str]] = []
    for _, get, fmt, better in columns:
        values = [_finite(get(m)) for m in models]
        present = [v for v in values if v is not None]
        if better is None or len(present) < 2:
            best.append(set())
            continue
        target = max(present) if better == "high" else min(present)
        # Compared as shown, so values that print the same are all marked.
        if len({fmt(v) for v in present}) == 1:
            best.append(set())  # all the same as shown: nothing stands out
            continue
        best.append({fmt(target)})
    headers = ["model", "kind"] + [c[0] for c in columns]
    rows = []
    for m in models:
        row = [(str(m.get("name", "")), False), (str(m.get("kind", "")), False)]
        for (_, get, fmt, _), marks in zip(columns, best):
            text = fmt(get(m))
            row.append((text, text in marks and text != DASH))
        rows.append(row)
    return headers, rows


def _setup_rows(report: dict) -> list[tuple[str, str]]:
    data = report.get("data") or {}
    backbone = report.get("backbone") or {}
    extraction = report.get("extraction") or {}
    names = [str(n) for n in data.get("label_names") or []]
    shown = ", ".join(names[:30]) + (f", \u2026 ({len(names)} in all)" if len(names) > 30 else "")
    splits = data.get("splits") or {}
    size = backbone.get("image_size")
    rows = [
        ("data", str(data.get("source", DASH))),
        ("classes", f"{len(names)}: {shown}" if names else DASH),
        ("splits", ", ".join(f"{k} {v}" for k, v in splits.items()) or DASH),
        ("evaluated on", str(data.get("eval_split", DASH))),
        ("backbone", str(backbone.get("name", DASH))),
        ("weights", str(backbone.get("weights", DASH)) + (" (RANDOM)" if backbone.get("random_weights") else "")),
        ("input size", "\u00d7".join(str(v) for v in size) if isinstance(size, list) else str(size or DASH)),
        ("fingerprint", str(backbone.get("fingerprint_id", DASH))),
    ]
    if extraction:
        rows.append((
            "feature extraction",
            f"{_seconds(extraction.get('seconds'))} s for {extraction.get('images', DASH)} images "
            f"({_rate(extraction.get('images_per_second'))} img/s)",
        ))
    versions = report.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def _history_rows(finetune: dict) -> tuple[list[str], list[list[str]], int | None]:
    history = finetune.get("history") or {}
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in history]
    n = max([len(history.get(k) or []) for k in keys + ["epoch", "phase"]] or [0])
    epochs = list(history.get("epoch") or range(n))
    phases = list(history.get("phase") or [])
    rows = []
    for i in range(n):
        row = [str(epochs[i]) if i < len(epochs) else str(i), str(phases[i]) if i < len(phases) else DASH]
        for k in keys:
            values = history.get(k) or []
            value = _finite(values[i]) if i < len(values) else None
            row.append(DASH if value is None else f"{value:.4f}")
        rows.append(row)
    best = finetune.get("best_epoch")
    return ["epoch", "phase"] + keys, rows, best if isinstance(best, int) else None


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Figure + Agg canvas, never pyplot: no display, no global state)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    # No "Software" metadata: the PNG bytes then depend only on the pixels.
    fig.savefig(os.fspath(path), format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


def _class_colours(k: int) -> list:
    import matplotlib

    if k <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, k)]


def _series(history: dict, key: str, n: int) -> np.ndarray:
    values = list(history.get(key) or [])[:n]
    values += [None] * (n - len(values))
    return np.array([np.nan if _finite(v) is None else float(v) for v in values])


def _save_learning_curves(finetune: dict, path: Path) -> None:
    history = finetune.get("history") or {}
    keys = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy")
    n = max(len(history.get(k) or []) for k in keys)
    given = list(history.get("epoch") or [])
    epochs = np.array([_finite(given[i]) if i < len(given) and _finite(given[i]) is not None else float(i)
                       for i in range(n)])
    phases = [str(p) for p in (history.get("phase") or [])][:n]
    phases += [""] * (n - len(phases))

    fig = _new_figure(11.0, 4.2)
    axes = fig.subplots(1, 2)
    shades = ["#f3f6fb", "#fbf6ef", "#f1f8f2", "#f8f1f7", "#f5f5f5"]
    # Contiguous runs of one phase, shaded and labelled; a dashed line where a phase starts.
    runs: list[tuple[str, int, int]] = []
    for i, phase in enumerate(phases):
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], i)
        else:
            runs.append((phase, i, i))
    best = finetune.get("best_epoch")
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for r, (phase, start, end) in enumerate(runs):
            lo, hi = epochs[start] - 0.5, epochs[end] + 0.5
            ax.axvspan(lo, hi, color=shades[r % len(shades)], zorder=0, lw=0)
            if r:
                ax.axvline(lo, color="#8a94a6", ls="--", lw=0.9, zorder=1)
            if phase:
                ax.text((lo + hi) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=8, color="#4a5567")
        train = _series(history, key, n)
        val = _series(history, f"val_{key}", n)
        if np.isfinite(train).any():
            ax.plot(epochs, train, "o-", ms=3, lw=1.6, color="#2f6fdd", label="train", zorder=3)
        if np.isfinite(val).any():
            ax.plot(epochs, val, "s-", ms=3.5, lw=1.6, color="#e0711a", label="validation", zorder=3)
        if isinstance(best, (int, float)) and n:
            ax.axvline(float(best), color="#2e7d32", lw=1.2, zorder=2, label=f"best epoch ({best})")
        ax.set_xlabel("epoch (0 = linear-probe start)")
        ax.set_ylabel(label)
        ax.set_title(label, pad=14)
        ax.grid(alpha=0.3, zorder=1)
        if n:
            ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Fine-tune learning curves", fontsize=12)
    fig.tight_layout()
    _save_png(fig, path)


def _save_embedding(embedding: dict, label_names: list[str], path: Path) -> None:
    points = np.asarray(embedding.get("points") or [], dtype=float).reshape(-1, 2)
    labels = np.asarray(embedding.get("labels") or [], dtype=np.int64)
    present = sorted(set(labels.tolist()))
    colours = _class_colours(max(len(present), 1))
    fig = _new_figure(8.0, 6.0)
    ax = fig.add_subplot()
    size = 14 if points.shape[0] <= 500 else 6
    for colour, c in zip(colours, present):
        name = label_names[c] if 0 <= c < len(label_names) else f"label {c}"
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colour, alpha=0.8, lw=0, label=name)
    method = "t-SNE" if embedding.get("method") == "tsne" else "PCA"
    shown, total = int(points.shape[0]), embedding.get("n_total", points.shape[0])
    ax.set_title(f"Eval-split embeddings, {method} (n = {shown}" + (f" of {total})" if total != shown else ")"))
    if method == "PCA":
        ratios = list(embedding.get("explained_variance") or []) + [0.0, 0.0]
        ax.set_xlabel(f"PC 1 ({100 * (ratios[0] or 0):.1f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * (ratios[1] or 0):.1f}% of variance)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if present:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8 if len(present) <= 20 else 6,
                  ncol=1 if len(present) <= 25 else 2, markerscale=1.5, frameon=False)
    fig.tight_layout()
    _save_png(fig, path)


def _save_thumbnail(path: str, source: str | None, dest: Path) -> str | None:
    """Write a JPEG thumbnail of ``path`` to ``dest``; return why not, or None on success."""
    from featx.decode import DecodeError, open_rgb, read_bytes

    candidate = Path(path)
    if not candidate.is_absolute() and source and not candidate.exists():
        candidate = Path(source) / candidate  # relative paths are relative to the data source
    try:
        data, _ = read_bytes(candidate)
        # featx's own decoder: EXIF orientation, every colour mode, bomb checks, reduced-size
        # JPEG decoding; any bad file comes back as a DecodeError with a reason.
        image = open_rgb(data, draft_size=(2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        image.save(dest, format="JPEG", quality=85)
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError, MemoryError) as e:
        return f"unreadable: {e.strerror or e}" if isinstance(e, OSError) else f"unreadable: {e}"
    except DecodeError as e:
        return str(e.skip)
    return None


# --------------------------------------------------------------------------------------------
# Writing


class _Assets:
    """Images written under out_dir/assets, in the order written (deduplicated)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.dir = out_dir / "assets"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []

    def path(self, name: str) -> Path:
        rel = f"assets/{name}"
        if rel not in self.paths:
            self.paths.append(rel)
        return self.out_dir / rel

    def data_uri(self, rel: str) -> str:
        mime = "image/jpeg" if rel.endswith(".jpg") else "image/png"
        data = (self.out_dir / rel).read_bytes()
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _write_text(path: Path, text: str) -> None:
    # Temporary file + rename: a reader never sees half a report.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _build_assets(report: dict, assets: _Assets) -> dict:
    """Write every figure and thumbnail; return where each went (relative paths)."""
    source = (report.get("data") or {}).get("source")
    made: dict[str, Any] = {"confusion": {}, "wrong": {}, "learning_curves": None, "embedding": None}
    from featx.metrics import save_confusion_png

    for i, model in enumerate(report.get("models") or []):
        metrics = model.get("metrics")
        if metrics and metrics.get("confusion_matrix") is not None:
            dest = assets.path(f"confusion-{i + 1}-{_slug(str(model.get('name', '')))}.png")
            title = f"{model.get('name')}: confusion matrix (n = {metrics.get('n')})"
            save_confusion_png(metrics, dest, title=title)
            made["confusion"][i] = str(dest.relative_to(assets.out_dir).as_posix())
        items = []
        for wrong in (model.get("wrong") or [])[:MAX_WRONG]:
            path = str(wrong.get("path", ""))
            # Named by the path, so an image wrong for several models is written once.
            name = f"wrong-{hashlib.sha1(path.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}.jpg"
            rel = f"assets/{name}"
            if rel in assets.paths:
                items.append((wrong, rel, None))
                continue
            problem = _save_thumbnail(path, source, assets.dir / name)
            if problem is None:
                assets.path(name)
            items.append((wrong, None if problem else rel, problem))
        made["wrong"][i] = items

    finetune = report.get("finetune")
    if finetune and finetune.get("history"):
        dest = assets.path("learning-curves.png")
        _save_learning_curves(finetune, dest)
        made["learning_curves"] = "assets/learning-curves.png"
    embedding = report.get("embedding")
    if embedding and embedding.get("points") is not None:
        dest = assets.path("embedding.png")
        names = [str(n) for n in (report.get("data") or {}).get("label_names") or []]
        _save_embedding(embedding, names, dest)
        made["embedding"] = "assets/embedding.png"
    return made


def _remove_stale_assets(out_dir: Path, keep: list[str]) -> None:
    # Only files a previous report.json listed as its own: never anything else in the folder.
    try:
        old = json.loads((out_dir / "report.json").read_text(encoding="utf-8")).get("assets") or []
    except (OSError, ValueError, AttributeError):
        return
    for rel in old:
        if isinstance(rel, str) and rel not in keep and re.fullmatch(r"assets/[A-Za-z0-9._-]+", rel):
            try:
                (out_dir / rel).unlink()
            except OSError:
                pass


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``assets/`` into ``out_dir``.

    ``report`` is the dict ``featx compare`` builds (title, data, backbone, versions,
    extraction, models, finetune, embedding, skipped, notes); missing optional parts are left
    out of the report. The JSON is that dict as strict JSON (NaN and infinities become null)
    plus ``assets`` (relative paths of the images written) and ``verdict``
    (:func:`compute_verdict`). The output depends only on the input: writing the same report
    twice gives the same bytes.

    Returns ``{"json": path, "md": path, "html": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _plain(report)
    for i, model in enumerate(data.get("models") or []):
        if not isinstance(model, dict) or not model.get("name") or not isinstance(model.get("metrics"), dict):
            raise ValueError(f"models[{i}] needs a 'name' and a 'metrics' dict (from featx.metrics.evaluate)")
    verdict = compute_verdict(data)
    assets = _Assets(out)
    made = _build_assets(data, assets)
    _remove_stale_assets(out, assets.paths)

    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    full = {**data, "assets": list(assets.paths), "verdict": verdict}
    _write_text(paths["json"], json.dumps(full, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    _write_text(paths["md"], _render_md(data, verdict, made))
    _write_text(paths["html"], _render_html(data, verdict, made, assets))
    return {k: os.fspath(v) for k, v in paths.items()}


# --------------------------------------------------------------------------------------------
# Markdown


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _md(text: Any) -> str:
    """Text safe inside Markdown (and its tables): markup characters escaped, one line."""
    text = html.escape(str(text), quote=False)  # raw <tags> would render in most viewers
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]], numeric: list[bool]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _render_md(report: dict, verdict: dict, made: dict) -> str:
    title = report.get("title") or "featx report"
    lines = [f"# {_md(title)}", ""]
    meta = _meta_line(report)
    if meta:
        lines += [_md(meta), ""]
    lines += [f"> **{_md(verdict['headline'])}**  ", f"> {_md(verdict['text'])}", ""]
    for warning in verdict["warnings"]:
        lines += [f"> **\u26a0 WARNING: {_md(warning)}**", ""]

    headers, rows = _summary_rows(report)
    lines += ["## Models", ""]
    numeric = [False, False] + [True] * (len(headers) - 2)
    cells = [[f"**{_md(t)}**" if best else _md(t) for t, best in row] for row in rows]
    lines += _md_table(headers, cells, numeric) + [""]
    lines += ["Scores on the eval split; precision, recall and F1 are macro averages. "
              "Bold: best in its column.", ""]

    lines += ["## Setup", ""]
    lines += _md_table(["", ""], [[_md(k), _md(v)] for k, v in _setup_rows(report)], [False, False]) + [""]

    finetune = report.get("finetune")
    if finetune:
        lines += ["## Fine-tuning", ""]
        if made["learning_curves"]:
            lines += [f"![fine-tune learning curves]({made['learning_curves']})", ""]
        settings = finetune.get("settings") or {}
        if settings:
            lines += _md_table(["setting", "value"], [[_md(k), _md(_setting(v))] for k, v in settings.items()],
                               [False, False]) + [""]
        headers_h, rows_h, best = _history_rows(finetune)
        if rows_h:
            if best is not None:
                lines += [f"Best epoch: {best} (bold).", ""]
            cells = [[f"**{_md(c)}**" if row[0] == str(best) else _md(c) for c in row] for row in rows_h]
            lines += _md_table(headers_h, cells, [True, False] + [True] * (len(headers_h) - 2)) + [""]

    for i, model in enumerate(report.get("models") or []):
        lines += [f"## {_md(model['name'])} ({_md(model.get('kind', ''))})", ""]
        if model.get("description"):
            lines += [_md(model["description"]), ""]
        lines += _md_table(["class", "precision", "recall", "F1", "support"], [
            [_md(name), _score(v.get("precision")), _score(v.get("recall")), _score(v.get("f1")),
             str(v.get("support", ""))]
            for name, v in (model["metrics"].get("per_class") or {}).items()
        ], [False, True, True, True, True]) + [""]
        if i in made["confusion"]:
            lines += [f"![confusion matrix of {_md(model['name'])}]({made['confusion'][i]})", ""]
        wrong = made["wrong"].get(i) or []
        if wrong:
            lines += ["Most confidently wrong:", ""]
            for item, rel, problem in wrong:
                caption = _md(_wrong_caption(item))
                if rel:
                    lines.append(f"- ![{caption}]({rel}) {caption}")
                else:
                    lines.append(f"- {caption} \u2014 image unavailable ({_md(problem)})")
            lines.append("")

    embedding = report.get("embedding")
    if made["embedding"]:
        lines += ["## Embedding map", "", f"![embedding map]({made['embedding']})", ""]
        if embedding.get("note"):
            lines += [_md(embedding["note"]), ""]

    lines += _md_skipped(report.get("skipped") or [])
    notes = report.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {_md(n)}" for n in notes] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_skipped(skipped: list) -> list[str]:
    lines = [f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        return lines + ["None.", ""]
    rows = [[_md(s.get("path", "")), _md(s.get("kind", "")), _md(s.get("reason", ""))]
            for s in skipped[:MAX_SKIPPED_ROWS]]
    lines += _md_table(["path", "kind", "reason"], rows, [False, False, False]) + [""]
    if len(skipped) > MAX_SKIPPED_ROWS:
        lines += [f"\u2026 and {len(skipped) - MAX_SKIPPED_ROWS} more (all listed in report.json).", ""]
    return lines


def _meta_line(report: dict) -> str:
    data = report.get("data") or {}
    backbone = report.get("backbone") or {}
    parts = []
    if backbone.get("name"):
        parts.append(f"backbone {backbone['name']}, weights {backbone.get('weights', '?')}")
    if data.get("eval_split"):
        splits = data.get("splits") or {}
        count = splits.get(data["eval_split"])
        parts.append(f"evaluated on {data['eval_split']}" + (f" ({count} images)" if count is not None else ""))
    if data.get("label_names"):
        parts.append(f"{len(data['label_names'])} classes")
    if report.get("created"):
        parts.append(str(report["created"]))
    return " \u00b7 ".join(parts)


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or DASH
    return DASH if value is None else str(value)


def _wrong_caption(item: dict) -> str:
    confidence = _finite(item.get("confidence"))
    text = f"{item.get('true', '?')} \u2192 {item.get('pred', '?')}"
    return text + (f" ({confidence:.2f})" if confidence is not None else "")


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2430;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:36px 0 10px;padding-bottom:4px;border-bottom:1px solid #e2e5ea}
h3{font-size:16px;margin:20px 0 8px}
.meta,.description,figcaption,.note{color:#5b6573}
.meta{margin:0 0 16px}
.verdict{margin:16px 0;padding:14px 18px;border-left:6px solid #2f6fdd;background:#edf3fe;border-radius:4px}
.verdict .headline{margin:0 0 4px;font-size:21px;font-weight:700}
.verdict .text{margin:0}
.warning{margin:12px 0;padding:12px 18px;border-left:6px solid #c62828;background:#fdecea;color:#7f1d1d;
  font-weight:700;border-radius:4px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e2e5ea;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
.num{text-align:right;white-space:nowrap}
table.models{font-size:14px}
table.models th,table.models td{padding:4px 6px}
table.models td:first-child{white-space:nowrap;font-weight:600}
td.best{font-weight:700;background:#fff6d6}
tr.best td{background:#fff6d6}
table.setup th{background:none;text-align:left}
figure{margin:8px 0 16px}
img{max-width:100%;height:auto}
.model-body{display:flex;flex-wrap:wrap;gap:8px 32px;align-items:flex-start}
img.confusion{max-width:min(100%,520px)}
img.embedding{max-width:min(100%,820px)}
figcaption{font-size:13px}
.wrong-grid{display:flex;flex-wrap:wrap;gap:12px}
figure.wrong-item{width:172px;margin:0}
figure.wrong-item figcaption{overflow-wrap:anywhere}
.placeholder{display:flex;align-items:center;justify-content:center;width:160px;height:120px;padding:6px;
  background:#eceff3;color:#5b6573;font-size:12px;text-align:center}
.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
footer{margin-top:40px;color:#8a94a6;font-size:12px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(cls: str, headers: list[str], rows: list[list[tuple[str, str]]], *, ident: str | None = None,
                row_classes: list[str] | None = None) -> list[str]:
    """A table; each cell is (text, css classes). Header cells take the column's classes."""
    first = rows[0] if rows else [("", "")] * len(headers)
    head = "".join(
        f'<th scope="col"{_cls("num" if "num" in c[1].split() else "")}>{_e(h)}</th>' for h, c in zip(headers, first)
    )
    out = [f'<div class="scroll"><table class="{cls}"' + (f' id="{ident}"' if ident else "") + ">",
           f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for r, row in enumerate(rows):
        rc = row_classes[r] if row_classes else ""
        out.append(f"<tr{_cls(rc)}>" + "".join(
            f"<td{_cls(c)}>" + (f"<strong>{_e(t)}</strong>" if "best" in c.split() else _e(t)) + "</td>"
            for t, c in row) + "</tr>")
    out += ["</tbody></table></div>"]
    return out


def _cls(classes: str) -> str:
    classes = " ".join(classes.split())
    return f' class="{classes}"' if classes else ""


def _img(cls: str, uri: str, alt: str, ident: str | None = None) -> str:
    return f'<img class="{cls}"' + (f' id="{ident}"' if ident else "") + f' src="{uri}" alt="{_e(alt)}">'


def _render_html(report: dict, verdict: dict, made: dict, assets: _Assets) -> str:
    title = str(report.get("title") or "featx report")
    out = ["<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
           "<header>", f"<h1>{_e(title)}</h1>"]
    meta = _meta_line(report)
    if meta:
        out.append(f'<p class="meta">{_e(meta)}</p>')
    out.append("</header>")

    winner = f" winner-{_slug(verdict['winner'])}" if verdict["winner"] else ""
    out += [f'<section id="verdict" class="verdict{winner}">',
            f'<p class="headline">{_e(verdict["headline"])}</p>', f'<p class="text">{_e(verdict["text"])}</p>',
            "</section>"]
    for i, warning in enumerate(verdict["warnings"]):
        out.append(f'<div class="warning" id="warning-{i + 1}" role="alert">\u26a0 {_e(warning)}</div>')

    headers, rows = _summary_rows(report)
    cells = [[(t, ("best" if best else "") + ("" if j < 2 else " num")) for j, (t, best) in enumerate(row)]
             for row in rows]
    out += ['<section id="models">', "<h2>Models</h2>"]
    out += _html_table("models", headers, cells, ident="models-table")
    out += ['<p class="note">Scores on the eval split; precision, recall and F1 are macro averages. '
            "Bold: best in its column.</p>", "</section>"]

    out += ['<section id="setup">', "<h2>Setup</h2>",
            '<div class="scroll"><table class="setup"><tbody>']
    out += [f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in _setup_rows(report)]
    out += ["</tbody></table></div>", "</section>"]

    finetune = report.get("finetune")
    if finetune:
        out += ['<section id="finetune">', "<h2>Fine-tuning</h2>"]
        if made["learning_curves"]:
            out += ["<figure>", _img("learning-curves", assets.data_uri(made["learning_curves"]),
                                     "fine-tune learning curves: loss and accuracy per epoch, train and validation"),
                    "<figcaption>Epoch 0 is the linear-probe starting point (validation only); shading marks the "
                    "phases.</figcaption>", "</figure>"]
        settings = finetune.get("settings") or {}
        if settings:
            out += _html_table("finetune-settings", ["setting", "value"],
                               [[(k, ""), (_setting(v), "")] for k, v in settings.items()])
        headers_h, rows_h, best = _history_rows(finetune)
        if rows_h:
            numeric = ["num", ""] + ["num"] * (len(headers_h) - 2)
            out += _html_table("history", headers_h, [[(c, n) for c, n in zip(row, numeric)] for row in rows_h],
                               row_classes=["best" if row[0] == str(best) else "" for row in rows_h])
        out.append("</section>")

    for i, model in enumerate(report.get("models") or []):
        slug = f"model-{i + 1}-{_slug(str(model['name']))}"
        out += [f'<section class="model" id="{slug}">',
                f"<h2>{_e(model['name'])} <small>({_e(model.get('kind', ''))})</small></h2>"]
        if model.get("description"):
            out.append(f'<p class="description">{_e(model["description"])}</p>')
        per_class = model["metrics"].get("per_class") or {}
        out.append('<div class="model-body">')  # per-class table and confusion matrix side by side
        out += _html_table("per-class", ["class", "precision", "recall", "F1", "support"], [
            [(name, ""), (_score(v.get("precision")), "num"), (_score(v.get("recall")), "num"),
             (_score(v.get("f1")), "num"), (str(v.get("support", "")), "num")]
            for name, v in per_class.items()
        ])
        if i in made["confusion"]:
            out += ["<figure>", _img("confusion", assets.data_uri(made["confusion"][i]),
                                     f"confusion matrix of {model['name']}"), "</figure>"]
        out.append("</div>")
        wrong = made["wrong"].get(i) or []
        if wrong:
            out += ["<h3>Most confidently wrong</h3>", '<div class="wrong-grid">']
            for item, rel, problem in wrong:
                caption = _wrong_caption(item)
                name = os.path.basename(str(item.get("path", "")))
                if rel:
                    out.append('<figure class="wrong-item">' + _img("wrong", assets.data_uri(rel), caption)
                               + f'<figcaption>{_e(caption)}<br><span class="path">{_e(name)}</span></figcaption></figure>')
                else:
                    out.append('<figure class="wrong-item missing"><div class="placeholder">image unavailable: '
                               f'{_e(problem)}</div><figcaption>{_e(caption)}<br><span class="path">{_e(name)}'
                               "</span></figcaption></figure>")
            out.append("</div>")
        out.append("</section>")

    embedding = report.get("embedding")
    if made["embedding"]:
        out += ['<section id="embedding">', "<h2>Embedding map</h2>", "<figure>",
                _img("embedding", assets.data_uri(made["embedding"]), "2-D map of the eval split's features by class")]
        if embedding.get("note"):
            out.append(f"<figcaption>{_e(embedding['note'])}</figcaption>")
        out += ["</figure>", "</section>"]

    skipped = report.get("skipped") or []
    out += ['<section id="skipped">', f"<h2>Skipped files ({len(skipped)})</h2>"]
    if skipped:
        out += _html_table("skipped", ["path", "kind", "reason"], [
            [(s.get("path", ""), "path"), (s.get("kind", ""), ""), (s.get("reason", ""), "")]
            for s in skipped[:MAX_SKIPPED_ROWS]
        ])
        if len(skipped) > MAX_SKIPPED_ROWS:
            out.append(f'<p class="note">\u2026 and {len(skipped) - MAX_SKIPPED_ROWS} more (all listed in report.json).</p>')
    else:
        out.append("<p>None.</p>")
    out.append("</section>")

    notes = report.get("notes") or []
    if notes:
        out += ['<section id="notes">', "<h2>Notes</h2>", '<ul class="notes">']
        out += [f"<li>{_e(n)}</li>" for n in notes]
        out += ["</ul>", "</section>"]
    out += ["<footer>Written by featx. The same data in report.json; images in assets/.</footer>",
            "</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
