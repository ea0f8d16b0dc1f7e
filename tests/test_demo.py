"""The README's first Quick start command: `featx demo`, offline, end to end."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"


def test_demo_runs_offline_end_to_end(tmp_path):
    r = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--no-progress", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "1797 in the set: 1797 extracted" in out
    for candidate in ("logreg", "svm"):
        assert candidate in out
    store = tmp_path / "demo" / "digits_mobilenet_0.25.h5"
    model = tmp_path / "demo" / "digits_best.skops"
    assert (tmp_path / "demo" / "digits_best.validation.confusion.png").stat().st_size > 1000
    ev = run_cli("evaluate", str(model), str(store), "--json")
    result = json.loads(ev.stdout)
    assert result["n"] == 450 and result["accuracy"] > 0.9  # real ImageNet features on digits
    # a second run is incremental: nothing recomputed
    again = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--no-progress", timeout=600)
    assert again.returncode == 0 and "0 extracted, 1797 already cached" in again.stdout
