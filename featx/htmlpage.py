"""One self-contained HTML page (inline CSS, images as ``data:`` URIs, no scripts): the skeleton and
stylesheet that ``featx report``'s report.html and ``featx audit``'s audit.html share.

The skeleton, ``templates/page.html``, and the base stylesheet, ``templates/page.css``, are package
data filled in with :class:`string.Template`; each page adds its own stylesheet and builds its body.
Every piece of text placed in a page goes through :func:`escape`, and the Content-Security-Policy
allows only inline styles and ``data:`` images, so a browser opening a page never touches the
network (and a name that slipped through escaping could not run anything).

>>> page = render_page("a <b>", "<p>hi</p>", css="p{color:red}")
>>> "<title>a &lt;b&gt;</title>" in page and "p{color:red}" in page and "default-src 'none'" in page
True
"""

from __future__ import annotations

import html
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@lru_cache(maxsize=None)
def package_text(package: str, name: str) -> str:
    """The text of ``templates/<name>`` in `package`, shipped as package data."""
    return resources.files(package).joinpath("templates", name).read_text(encoding="utf-8")


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_page(title: str, body: str, *, css: str = "") -> str:
    """The whole page: the skeleton with `title` (escaped here), the base stylesheet then `css`, and
    `body` (HTML the caller built from escaped text)."""
    return Template(package_text("featx", "page.html")).substitute(
        csp=CSP, title=escape(title), css=package_text("featx", "page.css") + css, body=body)
