"""``audit.html`` (one self-contained page: inline CSS, thumbnails as ``data:`` URIs, no scripts) and
``audit.json``, written by ``featx audit --out DIR``.

Findings are grouped by kind, most suspicious first, at most ``MAX_SHOWN`` of each kind on the page
(all of them in audit.json). Thumbnails are the only images the audit decodes, with featx's own
decoder; a file that is gone or unreadable shows a placeholder saying why. Every piece of text goes
through ``html.escape`` and the Content-Security-Policy allows only inline styles and data: images
(the page skeleton, base stylesheet and policy: :mod:`featx.htmlpage`).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

from featx.audit.findings import AuditResult
from featx.htmlpage import escape as _e
from featx.htmlpage import package_text, render_page

MAX_SHOWN = 60
THUMBNAIL_SIZE = 172


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _thumbnail(root: str, path: str) -> tuple[str | None, str]:
    """(data URI, "") of a JPEG thumbnail, or (None, why not)."""
    from featx.decode import DecodeError, open_rgb, read_bytes

    try:
        data, _ = read_bytes(Path(root) / path)
        image = open_rgb(data, draft_size=(2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
    except FileNotFoundError:
        return None, "file not found"
    except (OSError, ValueError, MemoryError) as exc:
        return None, f"unreadable: {exc}"
    except DecodeError as exc:
        return None, str(exc.skip)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), ""


def _figure_img(root: str, path: str, alt: str) -> str:
    uri, why = _thumbnail(root, path)
    if uri is None:
        return f'<div class="placeholder">image unavailable: {_e(why)}</div>'
    return f'<img class="thumb" src="{uri}" alt="{_e(alt)}">'


def _label_section(result: AuditResult) -> list[str]:
    out = ['<section id="label-issues">', f"<h2>Likely label errors ({len(result.label_issues)})</h2>",
           '<p class="note">Out-of-fold probability of the given label by a linear probe; confident learning '
           "flags rows the probe confidently puts in another class. Score = 1 - p(given).</p>", '<div class="grid">']
    for i in result.label_issues[:MAX_SHOWN]:
        out.append(f'<figure class="finding label-issue">{_figure_img(result.root, i.path, i.path)}<figcaption>'
                   f"given <b>{_e(i.given)}</b> → <b>{_e(i.suggested)}</b>? score {i.score:.3f}<br>"
                   f'<span class="path">{_e(i.path)}</span></figcaption></figure>')
    return out + ["</div>", "</section>"]


def _duplicate_section(result: AuditResult) -> list[str]:
    out = ['<section id="duplicates">',
           f"<h2>Duplicates ({len(result.duplicates)}, {len(result.leaks)} across splits)</h2>",
           '<p class="note">exact: the same bytes; near: cosine similarity of the features '
           f"({_e(result.settings['similarity'])}) ≥ {_e(result.settings['near_threshold'])}. Leaks between splits first, then label conflicts.</p>",
           '<div class="grid">']
    for d in result.duplicates[:MAX_SHOWN]:
        flags = "".join(f'<span class="flag {c}">{t}</span> ' for t, c, on in
                        (("LEAK", "leak", d.cross_split), ("LABELS", "labels", d.cross_label)) if on)
        out.append(f'<figure class="finding pair {d.kind}">' + "".join(
            _figure_img(result.root, side["path"], side["path"]) for side in (d.a, d.b))
            + f"<figcaption>{flags}{_e(d.kind)} {d.similarity:.3f}<br>" + "<br>".join(
                f'<span class="path">{_e(s["path"])}</span> ({_e(s["split"] or "-")}, {_e(s["label"] or "-")})'
                for s in (d.a, d.b)) + "</figcaption></figure>")
    return out + ["</div>", "</section>"]


def _outlier_section(result: AuditResult) -> list[str]:
    out = ['<section id="outliers">', f"<h2>Outliers ({len(result.outliers)})</h2>",
           '<p class="note">Far from every class: Mahalanobis distance to the nearest class mean (shared covariance); '
           f"flagged from a robust z-score of {_e(result.settings['outlier_z'])}.</p>", '<div class="grid">']
    for o in result.outliers[:MAX_SHOWN]:
        out.append(f'<figure class="finding outlier">{_figure_img(result.root, o.path, o.path)}<figcaption>'
                   f"z {o.z:.1f}, score {o.score:.3f}, {_e(o.label or '-')}<br>"
                   f'<span class="path">{_e(o.path)}</span></figcaption></figure>')
    return out + ["</div>", "</section>"]


def _balance_section(result: AuditResult) -> list[str]:
    bal = result.balance
    classes = list(bal.per_class)
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in ["split", *classes, "total"])
    body = [f"<tr><td>{_e(s)}</td>" + "".join(f'<td class="num">{by[c]}</td>' for c in classes)
            + f'<td class="num">{bal.per_split[s]}</td></tr>' for s, by in bal.counts.items()]
    out = ['<section id="balance">', "<h2>Class balance and splits</h2>",
           f'<div class="scroll"><table class="balance"><thead><tr>{head}</tr></thead><tbody>', *body,
           "</tbody></table></div>"]
    out += [f'<div class="warning" role="alert">⚠ {_e(w)}</div>' for w in bal.warnings]
    return out + ["</section>"]


def render_html(result: AuditResult) -> str:
    title = f"featx audit: {os.path.basename(result.store)}"
    out = ["<header>", f"<h1>{_e(title)}</h1>",
           f'<p class="meta">{result.n_rows} images, backbone {_e(result.backbone)}, fingerprint '
           f"{_e(result.fingerprint_id)}, root {_e(result.root)}</p>", "</header>",
           f'<p class="summary">{_count(len(result.label_issues), "likely label error")}, '
           f"{_count(len(result.duplicates), 'duplicate pair')} ({len(result.leaks)} across splits), "
           f"{_count(len(result.outliers), 'outlier')}.</p>"]
    out += [f'<div class="warning">{_e(n)}</div>' for n in result.notes]
    for section in (_duplicate_section, _label_section, _outlier_section, _balance_section):
        out += section(result)
    out.append(f"<footer>Written by featx audit. Every finding is in audit.json; at most {MAX_SHOWN} of each "
               "kind are shown here.</footer>")
    return render_page(title, "\n".join(out), css=package_text("featx.audit", "audit.css"))


def write_audit(result: AuditResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.html`` into `out_dir` (created); returns their paths."""
    from featx.fileio import write_bytes_atomically

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "audit.json", "html": out / "audit.html"}
    write_bytes_atomically(paths["json"], json.dumps(result.to_dict(), indent=2).encode("utf-8"))
    write_bytes_atomically(paths["html"], render_html(result).encode("utf-8"))
    return paths
