"""The verdict: best linear probe vs the fine-tuned model on the eval split, in one line.

:func:`compute_verdict` picks the most accurate model of each kind, the winner (a difference
under :data:`TIE_POINTS` percentage points is a tie) and the training-time ratio, and words the
headline shown at the top of every report format.
"""

from __future__ import annotations

from typing import Any

from featx.report.format import _finite, _seconds

__all__ = ["TIE_POINTS", "compute_verdict"]

TIE_POINTS = 0.05  # |delta| below this rounds to 0.0 points: reported as a tie


def _is_finetune(model: dict) -> bool:
    kind = str(model.get("kind") or "").strip().lower().replace("_", "-").replace(" ", "-")
    return kind in ("fine-tune", "finetune", "fine-tuned")


def _accuracy(model: dict) -> float | None:
    value = (model.get("metrics") or {}).get("accuracy")
    return _finite(value)



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

