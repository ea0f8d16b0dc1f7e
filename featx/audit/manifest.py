"""``--fix-manifest``: a CSV manifest of the audited set with the leaked copies left out and the
probe's suggested labels beside the given ones. The user's images are never touched; the CSV is a
proposal that ``featx extract out.csv`` reads (it takes ``path,label,split``; the extra columns are
for people).

Leaked copies: duplicates (exact or near) are joined into groups; a group whose rows sit in more than
one split keeps its rows of the earliest split (train, then validation, then test) and drops the rest,
so the held-out splits no longer contain images the model trained on.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from featx.audit.findings import AuditError

if TYPE_CHECKING:
    from featx.audit.findings import AuditResult

HEADER = ["path", "label", "split", "suggested_label", "issue"]
_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


def leaked_rows(result: AuditResult) -> set[int]:
    """Rows to leave out: in each duplicate group spanning splits, those not in its earliest split."""
    parent: dict[int, int] = {}

    def find(r: int) -> int:
        while parent.setdefault(r, r) != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    split_of = {}
    for d in result.duplicates:
        parent[find(d.a["row"])] = find(d.b["row"])
        split_of[d.a["row"]], split_of[d.b["row"]] = d.a["split"], d.b["split"]
    groups: dict[int, list[int]] = {}
    for r in split_of:
        groups.setdefault(find(r), []).append(r)
    dropped = set()
    for members in groups.values():
        first = min(_SPLIT_ORDER.get(split_of[r], 3) for r in members)
        dropped |= {r for r in members if _SPLIT_ORDER.get(split_of[r], 3) != first}
    return dropped


def _csv_path(image: Path, folder: Path) -> str:
    """Relative to the manifest's folder when the image is inside it (what featx extract accepts without
    --allow-outside-root), absolute otherwise."""
    try:
        return image.relative_to(folder).as_posix()
    except ValueError:
        return str(image)


def write_manifest(result: AuditResult, out: str | os.PathLike) -> tuple[int, int]:
    """Write the manifest; returns (rows written, leaked copies left out)."""
    from featx.fileio import write_bytes_atomically
    from featx.store import FeatureStore

    out = Path(out).expanduser().resolve()
    if out.exists():
        with open(out, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
        if first != ",".join(HEADER):
            raise AuditError(f"{out} exists and is not a manifest written by featx audit; not overwriting it")
    root = Path(result.root).expanduser().resolve()
    dropped = leaked_rows(result)
    issues = {i.row: i for i in result.label_issues}
    outliers = {o.row for o in result.outliers}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    with FeatureStore(result.store) as store:
        names = store.label_names + [""]
        rows = zip(store.paths.tolist(), store.y.tolist(), store.splits.tolist())
        for r, (path, label, split) in enumerate(rows):
            if r in dropped:
                continue
            issue = issues.get(r)
            kind = "label" if issue else ("outlier" if r in outliers else "")
            writer.writerow([_csv_path(root / path, out.parent), names[label], split,
                             issue.suggested if issue else "", kind])
        n = len(store)
    write_bytes_atomically(out, buf.getvalue().encode("utf-8"))
    return n - len(dropped), len(dropped)
