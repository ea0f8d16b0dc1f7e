"""First use on a connected machine: ImageNet weights are downloaded into Keras' cache, verified,
through a mirror when one is set, never in offline mode.

Every byte comes from a loopback HTTP server started here (127.0.0.1 only): the real download code
runs, only the address differs (FEATX_WEIGHTS_MIRROR). The served "good" file is a real Keras file:
a MobileNetV2 (alpha 1.0, the registry's) saved by Keras under keras.applications' file name.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_SIZE, make_photo_set, run_main
from featx.backbones import (
    REGISTRY, VENDORED_DIR, Backbone, WeightsUnavailable, describe_backbones, fingerprint_id, get_spec,
)
from featx.download import fetch

V2 = get_spec("mobilenetv2")
EFF = get_spec("efficientnetb0")  # Keras publishes an md5 for its file
VENDORED_BYTES = (VENDORED_DIR / "mobilenet_2_5_224_tf_no_top.h5").read_bytes()


# -- a loopback server ------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.rsplit("/", 1)[-1]
        srv.gets.append(name)
        kind, *rest = srv.routes.get(name, ("status", 404))
        if kind == "status":
            self.send_error(rest[0])
            return
        if kind == "html":
            body = b"<!DOCTYPE html><html><body><form>Proxy login</form></body></html>"
            self._head(200, len(body), rest[0] if rest else "text/html; charset=utf-8")
            self.wfile.write(body)
            return
        body = rest[0]
        if kind == "file":
            self._head(200, len(body))
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i:i + (1 << 16)])
                if srv.slow:
                    time.sleep(srv.slow)
        elif kind == "stall":  # headers, a little data, then silence
            self._head(200, len(body))
            self.wfile.write(body[:1000])
            self.wfile.flush()
            srv.release.wait(30)
        elif kind == "drop":  # half the promised bytes, then the connection closes
            self._head(200, len(body))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _head(self, code, length, ctype="application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict = {}
        self.gets: list[str] = []
        self.connections = 0
        self.slow = 0.0
        self.release = threading.Event()

    def verify_request(self, request, client_address):
        self.connections += 1
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/keras-mirror/"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """An empty Keras cache, online (conftest turns offline mode on for every other test), the mirror set."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("FEATX_OFFLINE", "0")
    monkeypatch.setenv("FEATX_WEIGHTS_MIRROR", server.url)
    monkeypatch.setenv("FEATX_DOWNLOAD_TIMEOUT", "2")
    return {"KERAS_HOME": str(home), "FEATX_OFFLINE": "0", "FEATX_WEIGHTS_MIRROR": server.url,
            "FEATX_DOWNLOAD_TIMEOUT": "2", "cache": home / "models"}


@pytest.fixture(scope="session")
def v2_bytes(tmp_path_factory) -> bytes:
    """A real Keras-saved MobileNetV2 (alpha 1.0, no top) under keras.applications' file name."""
    import keras

    net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(TEST_SIZE, TEST_SIZE, 3))
    path = tmp_path_factory.mktemp("v2") / "mobilenetv2.h5"  # legacy HDF5, as Keras' own files are
    net.save(str(path))
    return path.read_bytes()


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache other than complete weights and the (empty) lock files."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".featx-lock"))


# -- the registry is keras.applications' ----------------------------------------------------------
@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenet_0.5", "efficientnetb0", "efficientnetv2b0", "resnet50",
                                  "densenet121", "mobilenetv3small", "convnexttiny", "vgg16"])
def test_registry_addresses_and_hashes_are_those_keras_applications_uses(name, monkeypatch):
    """What keras.applications itself passes to its download helper for weights="imagenet"."""
    import importlib
    import pkgutil

    import keras
    import keras.src.applications as apps

    class Asked(Exception):
        pass

    def fake_get_file(fname=None, origin=None, file_hash=None, cache_subdir=None, **kw):
        raise Asked(fname, origin, file_hash, cache_subdir)

    for info in pkgutil.iter_modules(apps.__path__):
        if info.name.endswith("_test"):
            continue
        module = importlib.import_module(f"keras.src.applications.{info.name}")
        if hasattr(module, "file_utils"):
            monkeypatch.setattr(module.file_utils, "get_file", fake_get_file)
    spec = REGISTRY[name]
    size = 224 if spec.constructor.startswith("MobileNet") else 32  # others take any size without a warning
    with pytest.raises(Asked) as asked:
        getattr(keras.applications, spec.constructor)(include_top=False, weights="imagenet",
                                                      input_shape=(size, size, 3), **spec.kwargs)
    assert asked.value.args == (spec.weights_file, spec.weights_url, spec.weights_hash, "models")


# -- downloads -------------------------------------------------------------------------------------
def test_first_use_downloads_from_the_mirror_verifies_and_caches(env, server, v2_bytes):
    server.routes[V2.weights_file] = ("file", v2_bytes)
    bb = Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    url = server.url + V2.weights_file
    assert bb.weights.origin == f"downloaded from {url}" and bb.weights.url == url
    cached = env["cache"] / V2.weights_file
    assert bb.weights.path == cached and cached.read_bytes() == v2_bytes
    assert _leftovers(env["cache"]) == [V2.weights_file]  # no temporary left
    assert bb.fingerprint["weights_sha256"] == hashlib.sha256(v2_bytes).hexdigest()
    x = np.random.default_rng(0).integers(0, 255, (2, TEST_SIZE, TEST_SIZE, 3), dtype=np.uint8)
    assert bb.predict(x).shape == (2, 1280)

    # the next build uses the cache: no request, the same fingerprint (the source is not part of it)
    again = Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert again.weights.origin == "Keras cache" and again.weights.url is None
    assert server.gets == [V2.weights_file]
    assert fingerprint_id(again.fingerprint) == fingerprint_id(bb.fingerprint)


def test_a_file_with_the_wrong_hash_is_refused_before_any_model_is_built(env, server, monkeypatch):
    import keras

    built = []
    monkeypatch.setattr(keras.applications, "EfficientNetB0", lambda *a, **k: built.append(1))
    server.routes[EFF.weights_file] = ("file", VENDORED_BYTES)  # a real HDF5 weights file, but not this one
    with pytest.raises(WeightsUnavailable) as err:
        Backbone.build("efficientnetb0", image_size=TEST_SIZE)
    msg = str(err.value)
    assert EFF.weights_file in msg and server.url + EFF.weights_file in msg
    assert "md5" in msg and EFF.weights_hash in msg and "nothing was saved" in msg
    assert built == [] and _leftovers(env["cache"]) == []


@pytest.mark.parametrize("route, expected", [
    (lambda b: ("file", b[: len(b) // 2]), "does not load into the backbone"),  # truncated, complete response
    (lambda b: ("html",), "HTML page"),  # a proxy's login page
    (lambda b: ("html", "application/octet-stream"), "HTML/XML page"),  # ... sent with a binary type
    (lambda b: ("file", b"\0" * 4096), "not an HDF5 weights file"),
    (lambda b: ("status", 404), "HTTP 404"),
    (lambda b: ("status", 500), "HTTP 500"),
])
def test_bad_answers_are_refused_with_one_line_and_nothing_left(env, server, v2_bytes, route, expected):
    server.routes[V2.weights_file] = route(v2_bytes)
    with pytest.raises(WeightsUnavailable) as err:
        Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    msg = str(err.value)
    assert expected in msg and V2.weights_file in msg and server.url + V2.weights_file in msg
    assert "\n" not in msg and "FEATX_WEIGHTS_MIRROR" in msg
    assert _leftovers(env["cache"]) == []


def test_a_stalled_server_times_out(env, server, v2_bytes):
    server.routes[V2.weights_file] = ("stall", v2_bytes)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="timed out; FEATX_DOWNLOAD_TIMEOUT sets the limit.? after 1000 bytes"):
        Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert time.monotonic() - started < 15
    assert _leftovers(env["cache"]) == []


def test_a_dropped_connection_leaves_nothing_and_a_retry_succeeds(env, server, v2_bytes):
    server.routes[V2.weights_file] = ("drop", v2_bytes)
    with pytest.raises(WeightsUnavailable, match=r"connection dropped after \d+ of %d bytes" % len(v2_bytes)):
        Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert _leftovers(env["cache"]) == []
    server.routes[V2.weights_file] = ("file", v2_bytes)
    bb = Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert bb.weights.url and (env["cache"] / V2.weights_file).read_bytes() == v2_bytes


def test_no_server_at_the_address_is_a_clear_error(env, monkeypatch):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FEATX_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/")
    with pytest.raises(WeightsUnavailable, match="cannot connect"):
        Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert _leftovers(env["cache"]) == []


def test_a_temporary_left_by_a_killed_download_is_cleaned_up(env, server, v2_bytes):
    env["cache"].mkdir(parents=True)
    stale = env["cache"] / f".featx-part-abc123-{V2.weights_file}"
    stale.write_bytes(v2_bytes[:100])
    server.routes[V2.weights_file] = ("file", v2_bytes)
    Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    assert _leftovers(env["cache"]) == [V2.weights_file]


def test_concurrent_downloads_of_one_file_fetch_it_once(env, server, v2_bytes):
    """Several workers starting at once: one download, the others wait for it and use the file."""
    server.routes[V2.weights_file] = ("file", v2_bytes)
    server.slow = 0.02  # long enough for the others to find the lock taken
    dest = env["cache"] / V2.weights_file
    results, errors = [], []

    def one():
        try:
            results.append(fetch(server.url + V2.weights_file, dest, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [dest] * 3
    assert server.gets == [V2.weights_file] and dest.read_bytes() == v2_bytes


def test_a_cached_file_with_the_wrong_hash_is_refused_not_deleted(env):
    env["cache"].mkdir(parents=True)
    bad = env["cache"] / EFF.weights_file
    bad.write_bytes(VENDORED_BYTES)
    with pytest.raises(WeightsUnavailable, match="Delete it to download it again"):
        Backbone.build("efficientnetb0", image_size=TEST_SIZE)
    assert bad.read_bytes() == VENDORED_BYTES


def test_the_mirror_can_be_given_in_the_python_api(env, server, v2_bytes, monkeypatch):
    monkeypatch.delenv("FEATX_WEIGHTS_MIRROR")
    server.routes[V2.weights_file] = ("file", v2_bytes)
    bb = Backbone.build("mobilenetv2", image_size=TEST_SIZE, weights_mirror=server.url)
    assert bb.weights.url == server.url + V2.weights_file
    with pytest.raises(ValueError, match="not an http"):
        Backbone.build("efficientnetb0", weights_mirror="ftp://example.org/")


# -- offline ---------------------------------------------------------------------------------------
def test_offline_never_connects_and_says_what_to_do(env, server, v2_bytes, monkeypatch):
    server.routes[V2.weights_file] = ("file", v2_bytes)
    monkeypatch.setenv("FEATX_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as err:
        Backbone.build("mobilenetv2", image_size=TEST_SIZE)
    msg = str(err.value)
    assert V2.weights_file in msg and str(env["cache"]) in msg and "FEATX_WEIGHTS_MIRROR" in msg
    assert "--backbone mobilenet_0.25" in msg and "--weights PATH" in msg
    monkeypatch.setenv("FEATX_OFFLINE", "0")
    with pytest.raises(WeightsUnavailable, match="offline"):  # the API switch, too
        Backbone.build("mobilenetv2", image_size=TEST_SIZE, offline=True)
    from featx.sklearn import FeatureExtractor

    with pytest.raises(WeightsUnavailable, match="offline"):
        FeatureExtractor(backbone="mobilenetv2", offline=True).fit()
    data = make_photo_set(env["cache"].parent / "photos", classes=("cat",), n=2)
    r = run_main("extract", str(data), "--store", str(env["cache"].parent / "s.h5"), "--backbone",
                 "mobilenetv2", "--offline", env=env_for_cli(env))
    assert r.returncode == 1 and V2.weights_file in r.stderr and "Traceback" not in r.stderr
    assert server.connections == 0
    # the vendored backbone needs no download at all
    assert Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, offline=True).weights.origin == "vendored with featx"


def env_for_cli(env: dict) -> dict:
    return {k: v for k, v in env.items() if k != "cache"}


def test_feature_extractor_fit_downloads(env, server, v2_bytes):
    from featx.sklearn import FeatureExtractor

    server.routes[V2.weights_file] = ("file", v2_bytes)
    FeatureExtractor(backbone="mobilenetv2", image_size=TEST_SIZE, weights_mirror=server.url).fit()
    assert (env["cache"] / V2.weights_file).is_file() and server.gets == [V2.weights_file]


# -- `featx backbones` -----------------------------------------------------------------------------
def test_backbones_say_cached_vendored_or_download_with_its_size(env, server, v2_bytes, monkeypatch):
    env["cache"].mkdir(parents=True)
    (env["cache"] / V2.weights_file).write_bytes(v2_bytes)
    rows = {r["name"]: r for r in describe_backbones()}
    assert rows["mobilenet_0.25"]["weights"] == "vendored" and rows["mobilenetv2"]["weights"] == "cached"
    assert rows["efficientnetb0"]["weights"] == "download" and rows["efficientnetb0"]["download_mb"] > 10
    assert rows["efficientnetb0"]["weights_url"] == server.url + EFF.weights_file
    monkeypatch.setenv("FEATX_OFFLINE", "1")
    assert {r["name"]: r for r in describe_backbones()}["efficientnetb0"]["weights"] == "missing"
    out = run_main("backbones", env=env_for_cli(env))
    assert out.returncode == 0
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("efficientnetb0 "))
    assert "download" in line and "16.7 MB" in line
    assert "vendored" in next(ln for ln in out.stdout.splitlines() if ln.startswith("mobilenet_0.25 "))
    assert server.connections == 0


@pytest.mark.large
# -- the command line, end to end ------------------------------------------------------------------
def test_cli_extract_on_an_empty_cache_downloads_through_the_mirror(env, server, v2_bytes, tmp_path):
    server.routes[V2.weights_file] = ("file", v2_bytes)
    data = make_photo_set(tmp_path / "photos", classes=("cat", "flower"), n=3)
    store = tmp_path / "v2.h5"
    args = ["extract", str(data), "--store", str(store), "--backbone", "mobilenetv2", "--image-size", str(TEST_SIZE),
            "--weights", "imagenet", "--no-progress"]
    r = run_main(*args, env=env_for_cli(env))
    assert r.returncode == 0, r.stderr
    assert f"downloaded from {server.url}{V2.weights_file}" in r.stdout
    assert "6 extracted" in r.stdout and server.gets == [V2.weights_file]
    r = run_main(*args[:3], str(tmp_path / "again.h5"), *args[4:], "--json", env=env_for_cli(env))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["weights"]["origin"] == "Keras cache" and summary["n_extracted"] == 6
    assert summary["weights"]["sha256"] == hashlib.sha256(v2_bytes).hexdigest()
    assert server.gets == [V2.weights_file]  # the second run did not download


@pytest.mark.parametrize("route, expected", [(("status", 404), "HTTP 404"), (("html",), "HTML page")])
def test_cli_network_failures_end_with_one_line(env, server, tmp_path, route, expected):
    server.routes[V2.weights_file] = route
    data = make_photo_set(tmp_path / "photos", classes=("cat",), n=2)
    r = run_main("extract", str(data), "--store", str(tmp_path / "s.h5"), "--backbone", "mobilenetv2",
                 env=env_for_cli(env))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("featx extract: error: could not download") and expected in last
    assert not (tmp_path / "s.h5").exists() and _leftovers(env["cache"]) == []
