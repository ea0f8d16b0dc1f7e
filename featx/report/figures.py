"""The report's images: learning curves, embedding map and "confidently wrong" thumbnails.

matplotlib Figure + Agg canvas, never pyplot: no display, no global state. PNGs carry no
"Software" metadata, so their bytes depend only on the pixels. (The confusion matrices come
from :func:`featx.metrics.save_confusion_png`.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featx.report.format import _finite

THUMBNAIL_SIZE = 160  # px, longest side of the "confidently wrong" thumbnails


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
