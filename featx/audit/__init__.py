"""Audit a feature store's data: likely label errors, duplicates and leaks, outliers, class balance.

Works on the cached features alone (no image is decoded, except thumbnails for the HTML page) and
never modifies anything; it never imports Keras. One module per job::

    findings.py    the result dataclasses, AuditResult.to_dict() (the --json schema), AuditError
    labels.py      out-of-fold probe probabilities + confident learning -> LabelIssue
    neighbours.py  the embedding (whitened or centred); k nearest neighbours (exact blocks, or faiss IVF)
    duplicates.py  exact (sha256) and near (cosine) duplicate pairs; leaks across splits first
    outliers.py    Mahalanobis distance to the nearest class mean, robust z -> Outlier (+ LDA posteriors)
    balance.py     counts per split and class, warnings
    text.py        the terminal tables
    html.py        audit.html with thumbnails (featx.htmlpage's skeleton, templates/audit.css)
    manifest.py    --fix-manifest: a CSV without the leaked copies, suggested labels beside the given

The command, `featx audit STORE [--out DIR] [--json] [--fix-manifest CSV]`, is featx.cli's ``cmd_audit``.

Example::

    from featx.audit import audit
    result = audit("cache/flowers.h5")
    for issue in result.label_issues[:10]:
        print(issue.path, issue.given, "->", issue.suggested, round(issue.score, 2))
"""

from __future__ import annotations

import logging
import os
import time

from featx.audit.duplicates import NEAR_THRESHOLDS, find_duplicates
from featx.audit.findings import (SCHEMA_VERSION, AuditError, AuditResult, Balance, DuplicatePair, LabelIssue,
                                  Outlier)
from featx.audit.labels import TRUSTED_PROBE_ACCURACY, check_labels, find_label_issues, fits_in_memory
from featx.audit.neighbours import WHITEN_MIN_ROWS, approximate_similarities, fit_embedding, nearest_neighbours
from featx.audit.outliers import OUTLIER_Z, class_distances, find_outliers

log = logging.getLogger("featx")
NEIGHBOURS_K = 10  # neighbours looked at per row for near duplicates (a photo with more copies shows 10)

SIMILARITIES = ("auto", "whitened", "centred")  # auto: whitened from WHITEN_MIN_ROWS rows, else centred

__all__ = ["audit", "AuditResult", "AuditError", "LabelIssue", "DuplicatePair", "Outlier", "Balance",
           "NEAR_THRESHOLDS", "SIMILARITIES", "WHITEN_MIN_ROWS", "OUTLIER_Z", "SCHEMA_VERSION"]


def audit(store, *, cv: int = 5, seed: int = 0, near_threshold: float | None = None, similarity: str = "auto",
          outlier_z: float = OUTLIER_Z, neighbours: str = "auto", chunk_rows: int = 8192) -> AuditResult:
    """Audit the data in `store` (a path or an open :class:`~featx.store.FeatureStore`).

    ``cv`` folds give every labelled row an out-of-fold probability; ``similarity`` the space in which
    rows are compared ("auto": whitened from 2,560 rows, else centred; see
    :mod:`featx.audit.neighbours`); ``near_threshold`` the cosine similarity in that space from which
    two different files count as near duplicates (None: ``NEAR_THRESHOLDS`` of the space);
    ``outlier_z`` the robust z-score from which a row is an outlier; ``neighbours`` the search
    ("auto", "exact" or "ivf", see :mod:`featx.audit.neighbours`). At most ``chunk_rows`` feature
    rows are read at a time. Raises :class:`AuditError` for a store that cannot be audited (empty,
    one class, no labels) and :class:`~featx.store.StoreNotFound` for a missing one.
    """
    from featx.store import FeatureStore

    if near_threshold is not None and not (0 < near_threshold <= 1):
        raise AuditError(f"near_threshold must be in (0, 1], got {near_threshold!r}")
    if similarity not in SIMILARITIES:
        raise AuditError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise AuditError(f"cv must be an integer >= 2, got {cv!r}")
    if isinstance(store, FeatureStore):
        return _audit(store, cv, seed, near_threshold, similarity, outlier_z, neighbours, chunk_rows)
    with FeatureStore(os.fspath(store)) as opened:
        return _audit(opened, cv, seed, near_threshold, similarity, outlier_z, neighbours, chunk_rows)


def _audit(store, cv, seed, near_threshold, similarity, outlier_z, neighbours, chunk_rows) -> AuditResult:
    from featx.audit.balance import class_balance
    from featx.audit.duplicates import _Rows

    if len(store) == 0:
        raise AuditError(f"store {store.path} is empty: nothing to audit (did its extraction skip every file? "
                         "`featx info` lists the skipped files)")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    check_labels(store, store.y, cv)
    embedding = fit_embedding(store, chunk_rows, whiten=None if similarity == "auto" else similarity == "whitened")
    mean = embedding.mean
    if near_threshold is None:
        near_threshold = NEAR_THRESHOLDS[embedding.kind]
    large = not fits_in_memory(store)
    distances, proba = class_distances(store, mean, chunk_rows, posteriors=large)
    seconds["class_statistics"] = time.perf_counter() - started
    log.info("audit: %s done in %.1f s", "class_statistics", seconds["class_statistics"])
    started = time.perf_counter()
    label_issues, probe_accuracy = find_label_issues(store, cv=cv, seed=seed, proba=proba)
    del proba
    seconds["labels"] = time.perf_counter() - started
    log.info("audit: %s done in %.1f s", "labels", seconds["labels"])
    started = time.perf_counter()
    sims, idx, method = nearest_neighbours(store, embedding, NEIGHBOURS_K, method=neighbours, chunk_rows=chunk_rows)
    seconds["neighbours"] = time.perf_counter() - started
    log.info("audit: %s done in %.1f s", "neighbours", seconds["neighbours"])
    started = time.perf_counter()
    rows = _Rows(store)
    duplicates = find_duplicates(store, embedding, sims, idx, threshold=near_threshold,
                                 approximate=approximate_similarities(embedding, method), chunk_rows=chunk_rows,
                                 rows=rows)
    outliers = find_outliers(distances, rows, z_threshold=outlier_z)
    balance = class_balance(store.label_names, store.y, store.splits)
    seconds["duplicates_outliers_balance"] = time.perf_counter() - started
    log.info("audit: %s done in %.1f s", "duplicates_outliers_balance", seconds["duplicates_outliers_balance"])
    notes = []
    if store.random_weights:
        notes.append("features from random weights: similarities and probe scores mean little")
    if probe_accuracy < TRUSTED_PROBE_ACCURACY:
        notes.append(f"the label probe agrees with the given labels on {probe_accuracy:.0%} of the rows out of fold: "
                     "correct labels of hard images look as doubtful as wrong ones, so read the label list as "
                     "candidates to check; richer features (`featx tune`, `--layers`, `--views`) or a larger "
                     "backbone sharpen it")
    return AuditResult(
        store=str(store.path), root=store.root, fingerprint_id=store.fingerprint_id,
        backbone=str(store.fingerprint.get("backbone")), n_rows=len(store),
        settings={"cv": cv, "seed": seed, "similarity": embedding.name, "near_threshold": near_threshold,
                  "outlier_z": outlier_z, "neighbours": method, "label_probe": "lda-halves" if large else "logreg-l2",
                  "label_probe_accuracy": round(probe_accuracy, 4)},
        label_issues=label_issues, duplicates=duplicates, outliers=outliers, balance=balance, notes=notes,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
