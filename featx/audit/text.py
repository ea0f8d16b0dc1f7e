"""The terminal form of an audit: one table per kind of finding (most suspicious first), then counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featx.audit.findings import AuditResult


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _more(n: int, top: int) -> list[str]:
    return [f"… {n - top} more (--json or --out for all)"] if n > top else []


def format_result(result: AuditResult, top: int = 10) -> str:
    out = [f"featx audit {result.store}: {result.n_rows} rows, backbone {result.backbone}"]
    issues = result.label_issues
    out += ["", f"LIKELY LABEL ERRORS ({len(issues)}): out-of-fold probe, confident learning; score = 1 - p(given)"]
    out += _table(["score", "given", "suggested", "split", "path"],
                  [[f"{i.score:.3f}", i.given, i.suggested, i.split, i.path] for i in issues[:top]])
    out += _more(len(issues), top)
    dups = result.duplicates
    out += ["", f"DUPLICATES ({len(dups)}, {len(result.leaks)} across splits): exact = same bytes, "
                f"near = {result.settings['similarity']} cosine >= {result.settings['near_threshold']}"]
    out += _table(["kind", "sim", "flags", "path a (split, label)", "path b (split, label)"], [
        [d.kind, f"{d.similarity:.3f}", ",".join(f for f, on in (("LEAK", d.cross_split),
                                                                  ("LABELS", d.cross_label)) if on) or "-",
         f"{d.a['path']} ({d.a['split'] or '-'}, {d.a['label'] or '-'})",
         f"{d.b['path']} ({d.b['split'] or '-'}, {d.b['label'] or '-'})"] for d in dups[:top]])
    out += _more(len(dups), top)
    outs = result.outliers
    out += ["", f"OUTLIERS ({len(outs)}): Mahalanobis distance to the nearest class mean, "
                f"robust z >= {result.settings['outlier_z']}"]
    out += _table(["z", "score", "label", "split", "path"],
                  [[f"{o.z:.1f}", f"{o.score:.3f}", o.label or "-", o.split or "-", o.path] for o in outs[:top]])
    out += _more(len(outs), top)
    bal = result.balance
    out += ["", "BALANCE (images per split and class)"]
    classes = list(bal.per_class)
    out += _table(["split"] + classes + ["total"],
                  [[s] + [str(by[c]) for c in classes] + [str(bal.per_split[s])] for s, by in bal.counts.items()]
                  + [["all"] + [str(bal.per_class[c]) for c in classes] + [str(result.n_rows)]])
    out += [f"WARNING  {w}" for w in bal.warnings] + [f"NOTE     {n}" for n in result.notes]
    return "\n".join(out)
