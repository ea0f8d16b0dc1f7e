"""What an audit finds, as dataclasses: one per kind of finding, :class:`AuditResult` holding them all,
its strict-JSON form (``to_dict``) and its terminal table (``format``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AuditError", "LabelIssue", "DuplicatePair", "Outlier", "Balance", "AuditResult", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1  # of AuditResult.to_dict(); bumped when a key changes meaning


class AuditError(ValueError):
    """The store cannot be audited as it is (empty, one class, no labels); the CLI exits 1."""


@dataclass
class LabelIssue:
    """A labelled row whose given label the out-of-fold probe hardly believes.

    ``score`` = 1 - p(given label), higher is more suspicious; ``suggested`` is the probe's top class."""

    row: int
    path: str
    split: str
    given: str
    suggested: str
    score: float
    p_given: float
    p_suggested: float


@dataclass
class DuplicatePair:
    """Two rows with the same content (``kind`` "exact": same sha256) or nearly the same features
    ("near": cosine similarity of the features, whitened or centred, >= the threshold)."""

    kind: str
    similarity: float
    a: dict
    b: dict
    cross_split: bool
    cross_label: bool

    @property
    def rank_key(self) -> tuple:
        # leakage between splits first (it inflates the held-out score), then label conflicts
        return (not self.cross_split, not self.cross_label, -self.similarity, self.a["path"], self.b["path"])


@dataclass
class Outlier:
    """A row far from all others: ``score`` is the mean cosine distance to its nearest neighbours,
    ``z`` its robust z-score (median and MAD over the store)."""

    row: int
    path: str
    label: str
    split: str
    score: float
    z: float


@dataclass
class Balance:
    """Image counts per split and class, and what looks wrong about them."""

    counts: dict            # split -> {class: n}
    per_class: dict         # class -> n over all splits
    per_split: dict         # split -> n
    unlabelled: int
    imbalance_ratio: float  # largest class / smallest class (labelled rows)
    warnings: list[str] = field(default_factory=list)


def _plain(value: Any) -> Any:
    """Strict JSON: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class AuditResult:
    """Everything :func:`featx.audit.audit` found, each kind most suspicious first."""

    store: str
    root: str
    fingerprint_id: str
    backbone: str
    n_rows: int
    settings: dict
    label_issues: list[LabelIssue]
    duplicates: list[DuplicatePair]
    outliers: list[Outlier]
    balance: Balance
    notes: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def leaks(self) -> list[DuplicatePair]:
        return [d for d in self.duplicates if d.cross_split]

    def to_dict(self) -> dict:
        """The whole result as strict JSON (``featx audit --json``); schema version ``SCHEMA_VERSION``."""
        return _plain({
            "schema": SCHEMA_VERSION,
            "store": self.store, "root": self.root, "fingerprint_id": self.fingerprint_id,
            "backbone": self.backbone, "n_rows": self.n_rows, "settings": self.settings,
            "summary": {"label_issues": len(self.label_issues), "duplicates": len(self.duplicates),
                        "leaks": len(self.leaks), "outliers": len(self.outliers)},
            "label_issues": [asdict(f) for f in self.label_issues],
            "duplicates": [asdict(f) for f in self.duplicates],
            "outliers": [asdict(f) for f in self.outliers],
            "balance": asdict(self.balance),
            "notes": list(self.notes),
            "seconds": self.seconds,
        })

    def format(self, top: int = 10) -> str:
        """Terminal tables: the `top` most suspicious findings of each kind, then the counts."""
        from featx.audit.text import format_result

        return format_result(self, top)
