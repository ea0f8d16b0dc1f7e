"""Shared fixtures: real photos that ship with the test dependencies (tests/photos.py), the real
vendored backbone (built once). Nothing here needs ../shared: the suite runs from a bare clone."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from photos import photo_files  # noqa: F401  (re-exported for the test modules)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never use the internet: featx's only network access (downloading ImageNet weights missing
# from the Keras cache) is off for every test and its subprocesses; tests/test_weights_download.py
# turns it on against a loopback server.
os.environ["FEATX_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
TEST_SIZE = 96  # small inputs keep the suite fast; the vendored conv weights work at any size


def make_photo_set(root: Path, classes=("cat", "flower"), n=12, splits: dict | None = None) -> Path:
    """Copy real photos into a class-folder layout (optionally under split folders).

    ``splits`` maps a split folder name to (images per class, index of the first one)."""
    if splits:
        for split, (count, offset) in splits.items():
            for cls in classes:
                dest = root / split / cls
                dest.mkdir(parents=True, exist_ok=True)
                for f in photo_files(cls, count, offset):
                    shutil.copy2(f, dest / f.name)
    else:
        for cls in classes:
            dest = root / cls
            dest.mkdir(parents=True, exist_ok=True)
            for f in photo_files(cls, n):
                shutil.copy2(f, dest / f.name)
    return root


@pytest.fixture(scope="session")
def backbone():
    """The vendored MobileNet α=0.25 with its real ImageNet weights, at the test size."""
    from featx.backbones import Backbone

    return Backbone.build("mobilenet_0.25", weights="imagenet", image_size=TEST_SIZE)


@pytest.fixture
def photo_set(tmp_path) -> Path:
    return make_photo_set(tmp_path / "photos")


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    """Run the real `featx` command line in a subprocess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "featx.cli", *args], capture_output=True, text=True, env=full_env,
        cwd=cwd, timeout=timeout,
    )


def run_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `featx` command line in this process through ``featx.cli.main``: the exit code, stdout
    and stderr a subprocess would give, without its start-up (import of numpy, h5py, scikit-learn,
    Keras) on every call. For behaviour (codes, messages, JSON); start-up and quietness need run_cli."""
    from featx.cli import main

    out, err = io.StringIO(), io.StringIO()
    verbose = "-v" in args or "--verbose" in args
    # main() turns offline mode on through the environment (--offline): undone after the call like env
    with _environ(env or {}, restore=("FEATX_OFFLINE",)), _featx_log_to(err, verbose), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return subprocess.CompletedProcess(["featx", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _featx_log_to(stream, verbose: bool):
    """The log lines main()'s logging.basicConfig would print on stderr in a fresh process (in pytest's
    process the root logger already has handlers, so basicConfig does nothing): one-line-error tests
    see every line a user would."""
    root, handler = logging.getLogger(), logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("featx: %(message)s"))
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


@contextlib.contextmanager
def _environ(env: dict, restore: tuple = ()):
    saved = {k: os.environ.get(k) for k in (*env, *restore)}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: True when this run is the fast tier (`-m "not large"`): property-based tests then try a quarter of
#: their examples (the full suite, which CI runs, tries them all). Set in pytest_configure, which runs
#: before any test module is collected.
FAST_TIER = False


def pytest_configure(config: pytest.Config) -> None:
    global FAST_TIER
    FAST_TIER = (config.getoption("markexpr") or "").replace(" ", "") == "notlarge"


def examples(n: int) -> int:
    """A property-based test's example count: `n`, or a quarter of it (at least 100) in the fast tier."""
    return max(100, n // 4) if FAST_TIER else n
