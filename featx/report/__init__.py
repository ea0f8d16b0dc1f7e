"""The comparison report: feature transfer vs fine-tuning, as JSON, Markdown and one HTML file.

``featx compare`` evaluates several models on one held-out split and hands the results to
:func:`write_report`, which writes ``report.json`` (the data, plus the computed verdict),
``report.md`` (images linked from ``assets/``) and ``report.html`` (self-contained: every image
inlined as a ``data:`` URI, inline CSS, no scripts, no external URLs). :func:`embedding_2d`
computes the 2-D map of the eval split's features that the report plots, and
:func:`compute_verdict` the one-line answer shown at the top (with its 95% interval and test).

One module per concern:

- ``embedding``: the 2-D map (PCA, t-SNE), :func:`embedding_2d`
- ``verdict``: best probe (by train-split CV) vs fine-tune, paired test, :func:`compute_verdict`
- ``format``: one value -> the text of a table cell
- ``tables``: the report's tables as rows of text, shared by Markdown and HTML
- ``figures``: learning curves, embedding map and thumbnails (matplotlib, Agg)
- ``markdown``: ``report.md``
- ``html``: ``report.html``, from :mod:`featx.htmlpage` (skeleton, base CSS) and ``templates/report.css``
- ``writer``: strict JSON, assets and the files, :func:`write_report`
"""

from __future__ import annotations

from featx.report.embedding import embedding_2d
from featx.report.figures import THUMBNAIL_SIZE
from featx.report.format import DASH, MAX_SKIPPED_ROWS
from featx.report.verdict import compute_verdict
from featx.report.writer import MAX_WRONG, write_report

# The constants were module attributes of the old featx/report.py: still importable from here.
__all__ = ["DASH", "MAX_SKIPPED_ROWS", "MAX_WRONG", "THUMBNAIL_SIZE", "compute_verdict", "embedding_2d", "write_report"]
