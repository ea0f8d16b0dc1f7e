"""``report.html``: one self-contained page (inline CSS, images as ``data:`` URIs, no scripts).

The page skeleton, base stylesheet and Content-Security-Policy are :mod:`featx.htmlpage`'s (shared
with the audit page); the report's own stylesheet is package data, ``templates/report.css``, and
the body is built here. Every piece of text from the report data goes through :func:`_e`
(``html.escape`` with quotes) before it is placed in the page.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from featx.htmlpage import escape as _e
from featx.htmlpage import package_text, render_page
from featx.report.format import MAX_SKIPPED_ROWS, _score, _setting, _slug, _wrong_caption
from featx.report.tables import MODELS_NOTE, _history_rows, _meta_line, _setup_rows, _summary_rows

if TYPE_CHECKING:
    from featx.report.writer import _Assets

def _html_table(cls: str, headers: list[str], rows: list[list[tuple[str, str]]], *, ident: str | None = None,
                row_classes: list[str] | None = None) -> list[str]:
    """A table; each cell is (text, css classes). Header cells take the column's classes."""
    first = rows[0] if rows else [("", "")] * len(headers)
    head = "".join(
        f'<th scope="col"{_cls("num" if "num" in c[1].split() else "")}>{_e(h)}</th>' for h, c in zip(headers, first)
    )
    out = [f'<div class="scroll"><table class="{cls}"' + (f' id="{ident}"' if ident else "") + ">",
           f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for r, row in enumerate(rows):
        rc = row_classes[r] if row_classes else ""
        out.append(f"<tr{_cls(rc)}>" + "".join(
            f"<td{_cls(c)}>" + (f"<strong>{_e(t)}</strong>" if "best" in c.split() else _e(t)) + "</td>"
            for t, c in row) + "</tr>")
    out += ["</tbody></table></div>"]
    return out


def _cls(classes: str) -> str:
    classes = " ".join(classes.split())
    return f' class="{classes}"' if classes else ""


def _img(cls: str, uri: str, alt: str, ident: str | None = None) -> str:
    return f'<img class="{cls}"' + (f' id="{ident}"' if ident else "") + f' src="{uri}" alt="{_e(alt)}">'


def _html_model(i: int, model: dict, made: dict, assets: _Assets) -> list[str]:
    """The section of one model: per-class table, confusion matrix, confidently wrong images."""
    out: list[str] = []
    slug = f"model-{i + 1}-{_slug(str(model['name']))}"
    out += [f'<section class="model" id="{slug}">',
            f"<h2>{_e(model['name'])} <small>({_e(model.get('kind', ''))})</small></h2>"]
    if model.get("description"):
        out.append(f'<p class="description">{_e(model["description"])}</p>')
    per_class = model["metrics"].get("per_class") or {}
    out.append('<div class="model-body">')  # per-class table and confusion matrix side by side
    out += _html_table("per-class", ["class", "precision", "recall", "F1", "support"], [
        [(name, ""), (_score(v.get("precision")), "num"), (_score(v.get("recall")), "num"),
         (_score(v.get("f1")), "num"), (str(v.get("support", "")), "num")]
        for name, v in per_class.items()
    ])
    if i in made["confusion"]:
        out += ["<figure>", _img("confusion", assets.data_uri(made["confusion"][i]),
                                 f"confusion matrix of {model['name']}"), "</figure>"]
    out.append("</div>")
    wrong = made["wrong"].get(i) or []
    if wrong:
        out += ["<h3>Most confidently wrong</h3>", '<div class="wrong-grid">']
        for item, rel, problem in wrong:
            caption = _wrong_caption(item)
            name = os.path.basename(str(item.get("path", "")))
            if rel:
                out.append('<figure class="wrong-item">' + _img("wrong", assets.data_uri(rel), caption)
                           + f'<figcaption>{_e(caption)}<br><span class="path">{_e(name)}</span></figcaption></figure>')
            else:
                out.append('<figure class="wrong-item missing"><div class="placeholder">image unavailable: '
                           f'{_e(problem)}</div><figcaption>{_e(caption)}<br><span class="path">{_e(name)}'
                           "</span></figcaption></figure>")
        out.append("</div>")
    out.append("</section>")
    return out


def _render_html(report: dict, verdict: dict, made: dict, assets: _Assets) -> str:
    """The whole page: :func:`featx.htmlpage.render_page` with report.css and the body."""
    title = str(report.get("title") or "featx report")
    out = ["<header>", f"<h1>{_e(title)}</h1>"]
    meta = _meta_line(report)
    if meta:
        out.append(f'<p class="meta">{_e(meta)}</p>')
    out.append("</header>")

    winner = f" winner-{_slug(verdict['winner'])}" if verdict["winner"] else ""
    winner += f" decision-{_slug(verdict['decision'])}" if verdict.get("decision") else ""
    out += [f'<section id="verdict" class="verdict{winner}">',
            f'<p class="headline">{_e(verdict["headline"])}</p>', f'<p class="text">{_e(verdict["text"])}</p>',
            "</section>"]
    for i, warning in enumerate(verdict["warnings"]):
        out.append(f'<div class="warning" id="warning-{i + 1}" role="alert">\u26a0 {_e(warning)}</div>')

    headers, rows = _summary_rows(report)
    cells = [[(t, ("best" if best else "") + ("" if j < 2 else " num")) for j, (t, best) in enumerate(row)]
             for row in rows]
    out += ['<section id="models">', "<h2>Models</h2>"]
    out += _html_table("models", headers, cells, ident="models-table")
    out += [f'<p class="note">{_e(MODELS_NOTE)}</p>', "</section>"]

    out += ['<section id="setup">', "<h2>Setup</h2>",
            '<div class="scroll"><table class="setup"><tbody>']
    out += [f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in _setup_rows(report)]
    out += ["</tbody></table></div>", "</section>"]

    finetune = report.get("finetune")
    if finetune:
        out += ['<section id="finetune">', "<h2>Fine-tuning</h2>"]
        if made["learning_curves"]:
            out += ["<figure>", _img("learning-curves", assets.data_uri(made["learning_curves"]),
                                     "fine-tune learning curves: loss and accuracy per epoch, train and validation"),
                    "<figcaption>Epoch 0 is the linear-probe starting point (validation only); shading marks the "
                    "phases.</figcaption>", "</figure>"]
        settings = finetune.get("settings") or {}
        if settings:
            out += _html_table("finetune-settings", ["setting", "value"],
                               [[(k, ""), (_setting(v), "")] for k, v in settings.items()])
        headers_h, rows_h, best = _history_rows(finetune)
        if rows_h:
            numeric = ["num", ""] + ["num"] * (len(headers_h) - 2)
            out += _html_table("history", headers_h, [[(c, n) for c, n in zip(row, numeric)] for row in rows_h],
                               row_classes=["best" if row[0] == str(best) else "" for row in rows_h])
        out.append("</section>")

    for i, model in enumerate(report.get("models") or []):
        out += _html_model(i, model, made, assets)

    embedding = report.get("embedding")
    if made["embedding"]:
        out += ['<section id="embedding">', "<h2>Embedding map</h2>", "<figure>",
                _img("embedding", assets.data_uri(made["embedding"]), "2-D map of the eval split's features by class")]
        if embedding.get("note"):
            out.append(f"<figcaption>{_e(embedding['note'])}</figcaption>")
        out += ["</figure>", "</section>"]

    skipped = report.get("skipped") or []
    out += ['<section id="skipped">', f"<h2>Skipped files ({len(skipped)})</h2>"]
    if skipped:
        out += _html_table("skipped", ["path", "kind", "reason"], [
            [(s.get("path", ""), "path"), (s.get("kind", ""), ""), (s.get("reason", ""), "")]
            for s in skipped[:MAX_SKIPPED_ROWS]
        ])
        if len(skipped) > MAX_SKIPPED_ROWS:
            out.append(f'<p class="note">\u2026 and {len(skipped) - MAX_SKIPPED_ROWS} more (all listed in report.json).</p>')
    else:
        out.append("<p>None.</p>")
    out.append("</section>")

    notes = report.get("notes") or []
    if notes:
        out += ['<section id="notes">', "<h2>Notes</h2>", '<ul class="notes">']
        out += [f"<li>{_e(n)}</li>" for n in notes]
        out += ["</ul>", "</section>"]
    out.append("<footer>Written by featx. The same data in report.json; images in assets/.</footer>")
    return render_page(title, "\n".join(out), css=package_text("featx.report", "report.css"))
