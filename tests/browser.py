"""Render an HTML file in real headless Chromium and report what the browser saw.

Used by the report tests: the report must display in a browser, not merely parse. Chromium is a
hard requirement (`.ci/run` installs the Debian package `chromium`); without it the test fails
with the install command rather than skipping, so CI can never pass without the browser check.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 90  # seconds per Chromium run; a cold start on a busy 2-core machine takes a few

# Runs after load (so after every <img> has decoded or failed) and writes what it found into the
# DOM, which --dump-dom then prints.
_PROBE = """
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var classes = {};
  Array.prototype.forEach.call(document.querySelectorAll("[class]"), function (el) {
    el.classList.forEach(function (c) { classes[c] = (classes[c] || 0) + 1; });
  });
  var facts = {
    title: document.title,
    tables: document.querySelectorAll("table").length,
    table_classes: Array.prototype.map.call(document.querySelectorAll("table"),
                                            function (t) { return t.className; }),
    images: imgs.length,
    images_decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    image_classes: imgs.map(function (i) { return i.className; }),
    undecoded: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.className + ": " + i.alt; }),
    ids: Array.prototype.map.call(document.querySelectorAll("[id]"), function (e) { return e.id; }),
    classes: classes,
    scripts: document.scripts.length,
    // rules of each style sheet in effect (an inline <style> blocked by a CSP would have none)
    css_rules: Array.prototype.map.call(document.styleSheets, function (sh) { return sh.cssRules.length; }),
    text: document.body.innerText
  };
  var pre = document.createElement("pre");
  pre.id = "featx-check";
  pre.textContent = JSON.stringify(facts);
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str:
    """Path of a Chromium/Chrome binary on PATH (or $FEATX_CHROMIUM); fails the test if none."""
    override = os.environ.get("FEATX_CHROMIUM")
    candidates = ([override] if override else []) + list(BROWSERS)
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Chromium is needed to check that the HTML report renders, and none of "
        f"{', '.join(BROWSERS)} is on PATH. Install it: `sudo apt-get install chromium` "
        "(Debian/Ubuntu; .ci/run does this), or point FEATX_CHROMIUM at a Chrome binary.",
        pytrace=False,
    )


def _run(browser: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"Chromium did not finish within {TIMEOUT} s: {' '.join(cmd[:-1])}\n{e.stderr or ''}")
    if proc.returncode != 0:
        noise = re.compile(r"dbus|unexpected operator|Fontconfig")
        stderr = "\n".join(line for line in proc.stderr.splitlines() if not noise.search(line))
        pytest.fail(f"Chromium exited with {proc.returncode}: {' '.join(cmd)}\n{stderr[-3000:]}")
    return proc


def render_in_chromium(html_path: str | os.PathLike, tmp_path: Path) -> dict:
    """Open a copy of ``html_path`` in headless Chromium; return the facts the page reported.

    The copy lives in ``tmp_path`` (away from any ``assets/`` folder, so only images embedded in
    the file itself can display) with a small probe script appended; if the page declares a
    Content-Security-Policy, the copy's policy additionally allows that inline script. Returns
    the probe's facts (tables, images, images decoded, ids, classes, text, ...) plus
    ``screenshot`` (path of a 1280x2000 PNG) and ``screenshot_std`` (its pixel standard
    deviation; a blank page gives 0).
    """
    browser = find_chromium()
    source = Path(html_path).read_text(encoding="utf-8")
    page = re.sub(
        r'(<meta http-equiv="Content-Security-Policy" content=")([^"]*)(")',
        lambda m: m.group(1) + m.group(2) + "; script-src 'unsafe-inline'" + m.group(3),
        source,
        count=1,
    )
    page = page.replace("</body>", _PROBE + "</body>") if "</body>" in page else page + _PROBE
    copy = tmp_path / "chromium-check.html"
    copy.write_text(page, encoding="utf-8")
    url = copy.resolve().as_uri()

    dom = _run(browser, ["--dump-dom", url], tmp_path / "chromium-profile-dom").stdout
    found = re.search(r'<pre id="featx-check">(.*?)</pre>', dom, re.S)
    if not found:
        pytest.fail(f"the probe script did not run in Chromium; dumped DOM starts:\n{dom[:2000]}")
    facts = json.loads(html.unescape(found.group(1)))

    shot = tmp_path / "chromium-screenshot.png"
    _run(browser, [f"--screenshot={shot}", "--window-size=1280,2000", url],
         tmp_path / "chromium-profile-shot")
    if not shot.is_file():
        pytest.fail("Chromium wrote no screenshot")
    with Image.open(shot) as im:
        facts["screenshot_size"] = list(im.size)
        facts["screenshot_std"] = float(np.asarray(im.convert("L"), dtype=np.float64).std())
    facts["screenshot"] = str(shot)
    return facts
