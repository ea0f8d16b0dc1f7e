"""``report.md``: the report as Markdown, images linked from ``assets/``.

Every piece of text from the report data goes through :func:`_md`, which escapes Markdown
markup and HTML tags and keeps it on one line (safe inside a table cell).
"""

from __future__ import annotations

import html
import re
from typing import Any

from featx.report.format import MAX_SKIPPED_ROWS, _score, _setting, _wrong_caption
from featx.report.tables import MODELS_NOTE, _history_rows, _meta_line, _setup_rows, _summary_rows


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _md(text: Any) -> str:
    """Text safe inside Markdown (and its tables): markup characters escaped, one line."""
    text = html.escape(str(text), quote=False)  # raw <tags> would render in most viewers
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]], numeric: list[bool]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _render_md(report: dict, verdict: dict, made: dict) -> str:
    title = report.get("title") or "featx report"
    lines = [f"# {_md(title)}", ""]
    meta = _meta_line(report)
    if meta:
        lines += [_md(meta), ""]
    lines += [f"> **{_md(verdict['headline'])}**  ", f"> {_md(verdict['text'])}", ""]
    for warning in verdict["warnings"]:
        lines += [f"> **\u26a0 WARNING: {_md(warning)}**", ""]

    headers, rows = _summary_rows(report)
    lines += ["## Models", ""]
    numeric = [False, False] + [True] * (len(headers) - 2)
    cells = [[f"**{_md(t)}**" if best else _md(t) for t, best in row] for row in rows]
    lines += _md_table(headers, cells, numeric) + [""]
    lines += [_md(MODELS_NOTE), ""]

    lines += ["## Setup", ""]
    lines += _md_table(["", ""], [[_md(k), _md(v)] for k, v in _setup_rows(report)], [False, False]) + [""]

    finetune = report.get("finetune")
    if finetune:
        lines += ["## Fine-tuning", ""]
        if made["learning_curves"]:
            lines += [f"![fine-tune learning curves]({made['learning_curves']})", ""]
        settings = finetune.get("settings") or {}
        if settings:
            lines += _md_table(["setting", "value"], [[_md(k), _md(_setting(v))] for k, v in settings.items()],
                               [False, False]) + [""]
        headers_h, rows_h, best = _history_rows(finetune)
        if rows_h:
            if best is not None:
                lines += [f"Best epoch: {best} (bold).", ""]
            cells = [[f"**{_md(c)}**" if row[0] == str(best) else _md(c) for c in row] for row in rows_h]
            lines += _md_table(headers_h, cells, [True, False] + [True] * (len(headers_h) - 2)) + [""]

    for i, model in enumerate(report.get("models") or []):
        lines += [f"## {_md(model['name'])} ({_md(model.get('kind', ''))})", ""]
        if model.get("description"):
            lines += [_md(model["description"]), ""]
        lines += _md_table(["class", "precision", "recall", "F1", "support"], [
            [_md(name), _score(v.get("precision")), _score(v.get("recall")), _score(v.get("f1")),
             str(v.get("support", ""))]
            for name, v in (model["metrics"].get("per_class") or {}).items()
        ], [False, True, True, True, True]) + [""]
        if i in made["confusion"]:
            lines += [f"![confusion matrix of {_md(model['name'])}]({made['confusion'][i]})", ""]
        wrong = made["wrong"].get(i) or []
        if wrong:
            lines += ["Most confidently wrong:", ""]
            for item, rel, problem in wrong:
                caption = _md(_wrong_caption(item))
                if rel:
                    lines.append(f"- ![{caption}]({rel}) {caption}")
                else:
                    lines.append(f"- {caption} \u2014 image unavailable ({_md(problem)})")
            lines.append("")

    embedding = report.get("embedding")
    if made["embedding"]:
        lines += ["## Embedding map", "", f"![embedding map]({made['embedding']})", ""]
        if embedding.get("note"):
            lines += [_md(embedding["note"]), ""]

    lines += _md_skipped(report.get("skipped") or [])
    notes = report.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {_md(n)}" for n in notes] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_skipped(skipped: list) -> list[str]:
    lines = [f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        return lines + ["None.", ""]
    rows = [[_md(s.get("path", "")), _md(s.get("kind", "")), _md(s.get("reason", ""))]
            for s in skipped[:MAX_SKIPPED_ROWS]]
    lines += _md_table(["path", "kind", "reason"], rows, [False, False, False]) + [""]
    if len(skipped) > MAX_SKIPPED_ROWS:
        lines += [f"\u2026 and {len(skipped) - MAX_SKIPPED_ROWS} more (all listed in report.json).", ""]
    return lines

