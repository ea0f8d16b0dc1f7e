"""Writing a report: strict JSON, the images under ``assets/``, then ``report.md`` and ``report.html``.

:func:`write_report` is the entry point. The three text files are written to a temporary name and
renamed, so a reader never sees half a report; images a previous report listed and this one no
longer uses are removed (only those: nothing else in the folder is touched).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from featx.fileio import write_bytes_atomically

from featx.report.figures import _save_embedding, _save_learning_curves, _save_thumbnail
from featx.report.format import _slug
from featx.report.html import _render_html
from featx.report.markdown import _render_md
from featx.report.verdict import compute_verdict

__all__ = ["MAX_WRONG", "write_report"]

MAX_WRONG = 12  # thumbnails shown per model


def _plain(value: Any) -> Any:
    """A strict-JSON copy: numpy -> Python, tuples -> lists, paths -> str, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


class _Assets:
    """Images written under out_dir/assets, in the order written (deduplicated)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.dir = out_dir / "assets"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []

    def path(self, name: str) -> Path:
        rel = f"assets/{name}"
        if rel not in self.paths:
            self.paths.append(rel)
        return self.out_dir / rel

    def data_uri(self, rel: str) -> str:
        mime = "image/jpeg" if rel.endswith(".jpg") else "image/png"
        data = (self.out_dir / rel).read_bytes()
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _write_text(path: Path, text: str) -> None:
    # Temporary file + rename (featx.fileio): a reader never sees half a report.
    write_bytes_atomically(path, text.encode("utf-8"))


def _build_assets(report: dict, assets: _Assets) -> dict:
    """Write every figure and thumbnail; return where each went (relative paths)."""
    source = (report.get("data") or {}).get("source")
    made: dict[str, Any] = {"confusion": {}, "wrong": {}, "learning_curves": None, "embedding": None}
    from featx.metrics import save_confusion_png

    for i, model in enumerate(report.get("models") or []):
        metrics = model.get("metrics")
        if metrics and metrics.get("confusion_matrix") is not None:
            dest = assets.path(f"confusion-{i + 1}-{_slug(str(model.get('name', '')))}.png")
            title = f"{model.get('name')}: confusion matrix (n = {metrics.get('n')})"
            save_confusion_png(metrics, dest, title=title)
            made["confusion"][i] = str(dest.relative_to(assets.out_dir).as_posix())
        items = []
        for wrong in (model.get("wrong") or [])[:MAX_WRONG]:
            path = str(wrong.get("path", ""))
            # Named by the path, so an image wrong for several models is written once.
            name = f"wrong-{hashlib.sha1(path.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}.jpg"
            rel = f"assets/{name}"
            if rel in assets.paths:
                items.append((wrong, rel, None))
                continue
            problem = _save_thumbnail(path, source, assets.dir / name)
            if problem is None:
                assets.path(name)
            items.append((wrong, None if problem else rel, problem))
        made["wrong"][i] = items

    finetune = report.get("finetune")
    if finetune and finetune.get("history"):
        dest = assets.path("learning-curves.png")
        _save_learning_curves(finetune, dest)
        made["learning_curves"] = "assets/learning-curves.png"
    embedding = report.get("embedding")
    if embedding and embedding.get("points") is not None:
        dest = assets.path("embedding.png")
        names = [str(n) for n in (report.get("data") or {}).get("label_names") or []]
        _save_embedding(embedding, names, dest)
        made["embedding"] = "assets/embedding.png"
    return made


def _remove_stale_assets(out_dir: Path, keep: list[str]) -> None:
    # Only files a previous report.json listed as its own: never anything else in the folder.
    try:
        old = json.loads((out_dir / "report.json").read_text(encoding="utf-8")).get("assets") or []
    except (OSError, ValueError, AttributeError):
        return
    for rel in old:
        if isinstance(rel, str) and rel not in keep and re.fullmatch(r"assets/[A-Za-z0-9._-]+", rel):
            try:
                (out_dir / rel).unlink()
            except OSError:
                pass


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``assets/`` into ``out_dir``.

    ``report`` is the dict ``featx compare`` builds (title, data, backbone, versions,
    extraction, models, finetune, embedding, skipped, notes); missing optional parts are left
    out of the report. The JSON is that dict as strict JSON (NaN and infinities become null)
    plus ``assets`` (relative paths of the images written) and ``verdict``
    (:func:`compute_verdict`). The output depends only on the input: writing the same report
    twice gives the same bytes.

    Returns ``{"json": path, "md": path, "html": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _plain(report)
    for i, model in enumerate(data.get("models") or []):
        if not isinstance(model, dict) or not model.get("name") or not isinstance(model.get("metrics"), dict):
            raise ValueError(f"models[{i}] needs a 'name' and a 'metrics' dict (from featx.metrics.evaluate)")
    verdict = compute_verdict(data)
    assets = _Assets(out)
    made = _build_assets(data, assets)
    _remove_stale_assets(out, assets.paths)

    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    full = {**data, "assets": list(assets.paths), "verdict": verdict}
    _write_text(paths["json"], json.dumps(full, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    _write_text(paths["md"], _render_md(data, verdict, made))
    _write_text(paths["html"], _render_html(data, verdict, made, assets))
    return {k: os.fspath(v) for k, v in paths.items()}
