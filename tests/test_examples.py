"""Every example runs offline, on real photos, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, make_photo_set

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    return make_photo_set(tmp_path_factory.mktemp("ex") / "photos", classes=("cat", "flower"), n=20)


def run_example(name, *args, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "FEATX_EXAMPLES_WORKDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(REPO / "examples" / name), *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_grid_search_example(photo_folder, tmp_path):
    out = run_example("grid_search.py", photo_folder, tmp_path=tmp_path)
    assert "grid search over 12 candidates" in out and "held-out accuracy" in out
    assert len(list((tmp_path / "feature_cache").glob("*.h5"))) == 4  # one store per configuration


def test_cached_store_example(photo_folder, tmp_path):
    out = run_example("cached_store.py", photo_folder, tmp_path=tmp_path)
    assert "40 extracted" in out and "SGD hinge, out-of-core" in out and "as a DataFrame" in out
    again = run_example("cached_store.py", photo_folder, tmp_path=tmp_path)
    assert "0 extracted, 40 already cached" in again


def test_laptop_classifier_example(photo_folder, tmp_path):
    out = run_example("laptop_classifier.py", photo_folder, tmp_path=tmp_path)
    assert "accuracy" in out
    assert sum(line.startswith("predicted ") for line in out.splitlines()) == 3
