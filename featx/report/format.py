"""Small text formatters shared by the Markdown and HTML renderers (and the verdict text).

Each turns one value into the string shown in a table cell; a value that is missing or not a
finite number is shown as :data:`DASH`.
"""

from __future__ import annotations

import math
import re
from typing import Any

DASH = "\u2013"  # shown for a value that does not apply (ROC-AUC of a multi-class problem, ...)
MAX_SKIPPED_ROWS = 1000  # rows of the skipped-files table in md/html (all of them stay in the JSON)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None



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


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or DASH
    return DASH if value is None else str(value)


def _interval(ci: Any) -> str:
    """A 95% interval ({low, high} from featx.stats) as "[0.912, 0.957]"; anything else a dash."""
    if not isinstance(ci, dict) or _finite(ci.get("low")) is None or _finite(ci.get("high")) is None:
        return DASH
    return f"[{_finite(ci['low']):.3f}, {_finite(ci['high']):.3f}]"


# How a thumbnail's number is labelled: a probability reads "p = 0.40", an SVM decision value
# "margin 0.40" (it is not a probability and can exceed 1); reports without a kind say "score".
_CONFIDENCE_LABELS = {"probability": "p = ", "margin": "margin "}


def _wrong_caption(item: dict) -> str:
    confidence = _finite(item.get("confidence"))
    text = f"{item.get('true', '?')} \u2192 {item.get('pred', '?')}"
    if confidence is None:
        return text
    return text + f" ({_CONFIDENCE_LABELS.get(item.get('confidence_kind'), 'score ')}{confidence:.2f})"
