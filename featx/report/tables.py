"""The report's tables as rows of text, shared by the Markdown and HTML renderers.

The model summary (with the best value of each column marked), the setup, the fine-tune
history and the one-line description under the title: content only, no markup.
"""

from __future__ import annotations

from typing import Any

from featx.report.format import DASH, _finite, _human_bytes, _interval, _rate, _score, _seconds
from featx.report.verdict import _is_finetune



# (header, getter, formatter, better) for the summary table; better is "high", "low" or None
# (not highlighted: shared by every probe, or not comparable across models).
def _summary_columns(report: dict) -> list[tuple[str, Any, Any, str | None]]:
    extraction = (report.get("extraction") or {}).get("seconds")
    metric = lambda key: (lambda m: (m.get("metrics") or {}).get(key))  # noqa: E731
    return [
        ("accuracy", metric("accuracy"), _score, "high"),
        ("acc. 95% CI", metric("accuracy_ci"), _interval, None),
        ("balanced acc.", metric("balanced_accuracy"), _score, "high"),
        ("precision", metric("precision"), _score, "high"),
        ("recall", metric("recall"), _score, "high"),
        ("F1", metric("f1"), _score, "high"),
        ("F1 95% CI", metric("macro_f1_ci"), _interval, None),
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
        values = [_finite(get(m)) for m in models] if better else []
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


# Under the model table in both formats: what the intervals are and how the verdict chose.
MODELS_NOTE = ("Scores on the eval split; precision, recall and F1 are macro averages. Bold: best in its column. "
               "95% intervals: accuracy by Wilson score, F1 by stratified bootstrap. The verdict compares the "
               "fine-tuned model with the probe of the best train-split CV score (the eval split chooses nothing) "
               "on the same images: exact McNemar test, Newcombe interval of the difference.")


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
