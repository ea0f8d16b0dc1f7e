"""The verdict: best linear probe vs the fine-tuned model on the eval split, with its uncertainty.

:func:`compute_verdict` picks the best probe by its train-split cross-validation score (the
held-out split never chooses anything: its numbers are only reported), pairs its per-image
correctness with the fine-tuned model's on the same held-out images, and words the headline
from the 95% interval of the accuracy difference (Newcombe, paired) and the exact McNemar test
(featx.stats):

- "Fine-tuning is better by X points (95% CI [a, b], McNemar p = …)", or the probe, only when
  the interval excludes 0;
- "Too few held-out images to decide (n = …)" when it does not and n < featx.stats.MIN_DECISIVE_N;
- "No significant difference …" otherwise;
- "… not tested …" when the report records no per-image correctness to pair.
"""

from __future__ import annotations

from typing import Any

from featx import stats
from featx.report.format import _finite, _seconds

__all__ = ["compute_verdict"]


def _is_finetune(model: dict) -> bool:
    kind = str(model.get("kind") or "").strip().lower().replace("_", "-").replace(" ", "-")
    return kind in ("fine-tune", "finetune", "fine-tuned")


def _accuracy(model: dict) -> float | None:
    value = (model.get("metrics") or {}).get("accuracy")
    return _finite(value)


def _best_probe(probes: list[dict]) -> tuple[dict | None, str | None]:
    """The probe with the highest train-split CV score (ties: the first, compare's order), and a
    warning when no probe records one (then the first probe is compared, never the held-out best)."""
    probes = [m for m in probes if _accuracy(m) is not None]
    scored = [m for m in probes if _finite(m.get("cv_score")) is not None]
    if scored:
        return max(scored, key=lambda m: _finite(m["cv_score"])), None
    if not probes:
        return None, None
    return probes[0], (f"No linear probe records a train-split CV score: {probes[0].get('name')} (the first) is "
                       "compared; the held-out split is not used to choose.")


def _paired(probe: dict, ft: dict) -> tuple[list[bool], list[bool]] | None:
    """Per-image correctness of both models on the images both were judged on, or None if not recorded."""
    a, b = ft.get("correct"), probe.get("correct")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return None
    pairs = [(bool(x), bool(y)) for x, y in zip(a, b) if x is not None and y is not None]
    return ([x for x, _ in pairs], [y for _, y in pairs]) if pairs else None


def _format_ratio(ratio: float) -> str:
    return f"{ratio:.0f}\u00d7" if ratio >= 10 else f"{ratio:.1f}\u00d7"


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _interval(diff: stats.PairedDifference, sign: float = 1.0) -> str:
    """'95% CI [-8.5, 13.6], McNemar p = 1.000' of fine-tune minus probe, in points (sign -1: reversed)."""
    low, high = sorted((sign * diff.low * 100, sign * diff.high * 100))
    return f"{diff.confidence:.0%} CI [{low:.1f}, {high:.1f}], McNemar {_format_p(diff.p_value)}"


def _evidence(diff: stats.PairedDifference) -> str:
    return f"{diff.difference * 100:+.1f} points, {_interval(diff)}"


def _decide(verdict: dict, probe: dict, diff: stats.PairedDifference | None) -> None:
    """Fill ``decision``, ``winner`` and ``headline`` from the paired difference (fine-tune minus probe)."""
    name = probe.get("name")
    both = (f"fine-tuning {verdict['finetune_accuracy']:.3f} vs linear probe {name} "
            f"{verdict['best_probe_accuracy']:.3f}")
    if diff is None:
        verdict.update(decision="not tested", winner=None, headline=(
            f"Not tested: {both} ({verdict['delta_points']:+.1f} points); the report records no per-image "
            "predictions to pair"))
    elif diff.excludes_zero and diff.difference > 0:
        verdict.update(decision="significant", winner="fine-tune", headline=(
            f"Fine-tuning is better by {diff.difference * 100:.1f} points ({_interval(diff)})"))
    elif diff.excludes_zero:
        verdict.update(decision="significant", winner="feature transfer", headline=(
            f"Linear probe {name} is better by {-diff.difference * 100:.1f} points ({_interval(diff, -1)})"))
    elif stats.too_small_to_decide(diff.n, diff):
        verdict.update(decision="too small", winner="undecided", headline=(
            f"Too few held-out images to decide (n = {diff.n}): {both} ({_evidence(diff)})"))
    else:
        verdict.update(decision="not significant", winner="undecided", headline=(
            f"No significant difference: {both} ({_evidence(diff)})"))


def _cost(report: dict, probe: dict, ft: dict) -> tuple[float | None, str]:
    """Fine-tune training time over probe training plus feature extraction, and its words."""
    ft_seconds = _finite(ft.get("train_seconds"))
    probe_seconds = _finite(probe.get("train_seconds")) or 0.0
    extraction = _finite((report.get("extraction") or {}).get("seconds")) or 0.0
    if ft_seconds is None or probe_seconds + extraction <= 0:
        return None, ""
    # The probe's cost includes the one-off feature extraction it needs; the fine-tune decodes
    # images itself, so its training time is its whole cost.
    ratio = ft_seconds / (probe_seconds + extraction)
    return round(ratio, 2), (f" at {_format_ratio(ratio)} the training time ({_seconds(ft_seconds)} s vs "
                             f"{_seconds(probe_seconds + extraction)} s for feature extraction + probe training)")


def _interval_text(model: dict) -> str:
    ci = (model.get("metrics") or {}).get("accuracy_ci")
    return f" [{ci['low']:.3f}, {ci['high']:.3f}]" if isinstance(ci, dict) else ""


def _compare_both(verdict: dict, report: dict, probe: dict, ft: dict) -> None:
    # + 0.0 turns a rounded -0.0 into 0.0, so an equal pair never reads "-0.0 points".
    verdict["delta_points"] = round((verdict["finetune_accuracy"] - verdict["best_probe_accuracy"]) * 100, 1) + 0.0
    paired = _paired(probe, ft)
    diff = stats.paired_difference_interval(*paired) if paired else None
    if diff is not None:
        verdict.update(n=diff.n, difference=diff.to_dict())
        if diff.n < (probe.get("metrics") or {}).get("n", diff.n):
            verdict["warnings"].append(f"Only {diff.n} held-out images were judged by both models; the test "
                                       "and interval use those.")
    _decide(verdict, probe, diff)
    verdict["time_ratio"], cost = _cost(report, probe, ft)
    cv = _finite(probe.get("cv_score"))
    chosen = f" (chosen by train-split CV score {cv:.3f})" if cv is not None else ""
    tested = f" ({_evidence(diff)}, n = {diff.n})" if diff else f" ({verdict['delta_points']:+.1f} points)"
    verdict["text"] = (
        f"Fine-tuning ({ft.get('name')}): {verdict['finetune_accuracy']:.3f}{_interval_text(ft)} vs best linear "
        f"probe {probe.get('name')}{chosen}: {verdict['best_probe_accuracy']:.3f}{_interval_text(probe)}"
        f"{tested}{cost}.")


def compute_verdict(report: dict) -> dict:
    """The answer at a glance: best linear probe vs the fine-tuned model on the eval split.

    Returns ``best_probe`` (highest train-split ``cv_score``), ``best_probe_accuracy``,
    ``best_probe_cv_score``, ``finetune``, ``finetune_accuracy``, ``delta_points`` (fine-tune
    minus probe, in percentage points, 1 decimal), ``n`` and ``difference`` (the paired test:
    featx.stats.PairedDifference.to_dict of fine-tune minus probe, or None when the models record
    no per-image ``correct``), ``decision`` ("significant", "not significant", "too small",
    "not tested" or None), ``winner`` ("fine-tune", "feature transfer", "undecided" or None),
    ``time_ratio`` (fine-tune training time over probe training plus feature extraction),
    ``headline``, ``text`` and ``warnings``.
    """
    models = [m for m in report.get("models") or [] if isinstance(m, dict)]
    probe, note = _best_probe([m for m in models if not _is_finetune(m)])
    ft = next((m for m in models if _is_finetune(m) and _accuracy(m) is not None), None)
    verdict: dict[str, Any] = {
        "best_probe": probe.get("name") if probe else None,
        "best_probe_accuracy": _accuracy(probe) if probe else None,
        "best_probe_cv_score": _finite(probe.get("cv_score")) if probe else None,
        "finetune": ft.get("name") if ft else None,
        "finetune_accuracy": _accuracy(ft) if ft else None,
        "delta_points": None, "n": None, "difference": None, "decision": None, "winner": None,
        "time_ratio": None, "headline": "", "text": "", "warnings": [note] if note else [],
    }
    if (report.get("backbone") or {}).get("random_weights"):
        verdict["warnings"].append(
            "RANDOM WEIGHTS: the backbone was not pretrained, so these results say nothing about "
            "transfer learning."
        )
    if probe and ft:
        _compare_both(verdict, report, probe, ft)
    elif probe:
        verdict["winner"] = "feature transfer"
        verdict["headline"] = f"Best linear probe: {probe.get('name')}, accuracy {verdict['best_probe_accuracy']:.3f}"
        verdict["text"] = (f"Best linear probe {probe.get('name')}: accuracy {verdict['best_probe_accuracy']:.3f}"
                           f"{_interval_text(probe)}; no fine-tuned model in this comparison.")
    elif ft:
        verdict["winner"] = "fine-tune"
        verdict["headline"] = f"Fine-tuned model {ft.get('name')}: accuracy {verdict['finetune_accuracy']:.3f}"
        verdict["text"] = (f"Fine-tuned model {ft.get('name')}: accuracy {verdict['finetune_accuracy']:.3f}"
                           f"{_interval_text(ft)}; no linear probe to compare with.")
    else:
        verdict["headline"] = "No model was evaluated"
        verdict["text"] = "No model with an accuracy on the eval split; nothing to compare."
    return verdict
