"""featx audit: planted faults in real photos are found and ranked first; bad stores get one line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_photo_set
from photos import photo_files

from featx.audit import AuditError, audit
from featx.backbones import fingerprint_id
from featx.cli import main
from featx.extract import extract

CLASSES = ("cat", "flower", "coffee", "rocket")
FLIPPED = "train/cat/flipped_flower.jpg"       # a flower photo filed under cat
COPY = "validation/cat/cat_0002_copy.jpg"      # resized, cropped, re-encoded copy of a train photo
SOURCE = "train/cat/cat_0002.jpg"
OFF_TOPIC = "train/rocket/astronaut.jpg"        # none of the classes
EXACT = ("train/coffee/coffee_0001.jpg", "train/coffee/coffee_0001_again.jpg")


def _plant(root):
    make_photo_set(root, classes=CLASSES, splits={"train": (8, 0), "validation": (4, 8)})
    shutil.copy2(photo_files("flower", 1, 40)[0], root / FLIPPED)
    with Image.open(root / SOURCE) as im:
        w, h = im.size
        copy = im.crop((int(w * 0.02), 0, w, h)).resize((int(w * 0.9), int(h * 0.9)), Image.Resampling.BILINEAR)
        copy.save(root / COPY, "JPEG", quality=75)
    shutil.copy2(photo_files("astronaut", 1, 0)[0], root / OFF_TOPIC)
    shutil.copy2(root / EXACT[0], root / EXACT[1])
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory, backbone):
    base = tmp_path_factory.mktemp("audit")
    root = _plant(base / "photos")
    store = base / "planted.h5"
    extract(root, store, backbone=backbone, progress=False)
    return {"root": root, "store": store, "result": audit(store), "base": base}


def test_planted_label_flip_is_the_top_label_issue(planted):
    issues = planted["result"].label_issues
    assert issues, "the flipped photo was not flagged"
    top = issues[0]
    assert (top.path, top.given, top.suggested) == (FLIPPED, "cat", "flower")
    assert top.score == pytest.approx(1 - top.p_given) and top.score > 0.5
    assert [i.score for i in issues] == sorted((i.score for i in issues), reverse=True)
    # four distinct photo classes: the probe agrees with the given labels on most rows, and says so
    from featx.audit.labels import TRUSTED_PROBE_ACCURACY

    accuracy = planted["result"].settings["label_probe_accuracy"]
    assert 0.8 <= accuracy < 1  # the flipped photo, at least, disagrees
    assert (accuracy < TRUSTED_PROBE_ACCURACY) == any("label probe agrees" in n for n in planted["result"].notes)


def test_planted_copy_in_the_other_split_is_the_top_near_duplicate(planted):
    dups = planted["result"].duplicates
    near = [d for d in dups if d.kind == "near"]
    assert near, "the planted copy was not found"
    top = near[0]
    assert {top.a["path"], top.b["path"]} == {SOURCE, COPY}
    assert top.cross_split and not top.cross_label and top.similarity >= planted["result"].settings["near_threshold"]
    # leaks rank before the same-split exact duplicate
    assert dups.index(top) < next(i for i, d in enumerate(dups) if d.kind == "exact")


def test_exact_duplicates_from_the_content_hash(planted):
    exact = [d for d in planted["result"].duplicates if d.kind == "exact"]
    assert [(d.a["path"], d.b["path"], d.similarity, d.cross_split) for d in exact] == [(*EXACT, 1.0, False)]


def test_off_topic_photo_is_the_top_outlier(planted):
    outliers = planted["result"].outliers
    assert outliers and outliers[0].path == OFF_TOPIC
    assert outliers[0].z >= planted["result"].settings["outlier_z"]
    assert FLIPPED not in {o.path for o in outliers}  # near its real class: a label error, not an outlier


def test_balance_counts(planted):
    bal = planted["result"].balance
    assert bal.per_split == {"train": 35, "validation": 17}
    assert bal.counts["train"] == {"cat": 9, "coffee": 9, "flower": 8, "rocket": 9}
    assert bal.counts["validation"] == {"cat": 5, "coffee": 4, "flower": 4, "rocket": 4}
    assert bal.unlabelled == 0 and bal.imbalance_ratio == pytest.approx(14 / 12)


def test_cli_json_schema_and_never_imports_keras(planted):
    code = ("import json, sys; from featx.cli import main; rc = main(['audit', sys.argv[1], '--json']); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')], 'imported Keras'; "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(planted["store"])], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1 and doc["n_rows"] == 52 and doc["backbone"] == "mobilenet_0.25"
    assert set(doc) >= {"store", "root", "fingerprint_id", "settings", "summary", "label_issues", "duplicates",
                        "outliers", "balance", "notes", "seconds"}
    assert set(doc["label_issues"][0]) == {"row", "path", "split", "given", "suggested", "score", "p_given",
                                           "p_suggested"}
    assert set(doc["duplicates"][0]) == {"kind", "similarity", "a", "b", "cross_split", "cross_label"}
    assert set(doc["duplicates"][0]["a"]) == {"row", "path", "label", "split"}
    assert set(doc["outliers"][0]) == {"row", "path", "label", "split", "score", "z"}
    assert doc["summary"] == {"label_issues": len(doc["label_issues"]), "duplicates": len(doc["duplicates"]),
                              "leaks": sum(d["cross_split"] for d in doc["duplicates"]),
                              "outliers": len(doc["outliers"])}
    assert doc["label_issues"][0]["path"] == FLIPPED


def test_fix_manifest_drops_the_leaked_copy_and_suggests_labels(planted, capsys):
    from featx.sources import from_csv

    out = planted["root"] / "fixed.csv"
    before = sorted(p.relative_to(planted["root"]) for p in planted["root"].rglob("*.jpg"))
    assert main(["audit", str(planted["store"]), "--fix-manifest", str(out)]) == 0
    assert "leaked copies left out" in capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_path = {r["path"]: r for r in rows}
    assert list(rows[0]) == ["path", "label", "split", "suggested_label", "issue"]
    assert COPY not in by_path and SOURCE in by_path  # the validation copy goes, the train original stays
    assert by_path[FLIPPED]["label"] == "cat" and by_path[FLIPPED]["suggested_label"] == "flower"
    assert by_path[FLIPPED]["issue"] == "label" and by_path[OFF_TOPIC]["issue"] == "outlier"
    assert by_path[SOURCE]["suggested_label"] == ""
    # what was dropped: the copy, and validation twins of train views close enough to count as copies
    dropped = {str(p) for p in before} - set(by_path)
    assert COPY in dropped and all(p.startswith("validation/") for p in dropped)
    assert sorted(p.relative_to(planted["root"]) for p in planted["root"].rglob("*.jpg")) == before  # untouched
    assert len(from_csv(out).items) == len(rows)  # featx extract reads it
    (planted["base"] / "mine.csv").write_text("my,own,file\n")
    assert main(["audit", str(planted["store"]), "--fix-manifest", str(planted["base"] / "mine.csv")]) == 1
    assert "not a manifest written by featx audit" in capsys.readouterr().err
    assert (planted["base"] / "mine.csv").read_text() == "my,own,file\n"


def _one_line_error(capsys, argv, code: int, words: str) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_bad_stores_get_one_line_and_exit_1(tmp_path, backbone, capsys):
    from featx.store import StoreWriter

    empty = tmp_path / "empty.h5"
    fp = {"backbone": "mobilenet_0.25", "feature_dim": 256}
    with StoreWriter(empty, fingerprint=fp, fingerprint_id=fingerprint_id(fp)):
        pass
    _one_line_error(capsys, ["audit", str(empty)], 1, "is empty: nothing to audit")

    one = tmp_path / "one.h5"
    extract(make_photo_set(tmp_path / "one", classes=("cat",), n=6), one, backbone=backbone, progress=False)
    _one_line_error(capsys, ["audit", str(one)], 1, "has one class only ('cat')")

    unlabelled = tmp_path / "unlabelled.h5"
    extract([str(p) for p in photo_files("cat", 3) + photo_files("rocket", 3)], unlabelled, backbone=backbone,
            progress=False)
    _one_line_error(capsys, ["audit", str(unlabelled)], 1, "has no labelled rows")

    _one_line_error(capsys, ["audit", str(tmp_path / "missing.h5")], 2, "missing.h5")
    with pytest.raises(AuditError, match="cv must be an integer >= 2"):
        audit(one, cv=1)
    two = tmp_path / "two.h5"
    extract(make_photo_set(tmp_path / "two", classes=("cat", "rocket"), n=4), two, backbone=backbone, progress=False)
    _one_line_error(capsys, ["audit", str(two), "--similarity", "whitened", "--cv", "2"], 1,
                    "whitening estimates 128 directions and needs at least 2560 rows")


def _synthetic_rows(n=3000, dim=256, seed=0):
    """Store rows of Gaussian-cluster features with 40 planted near copies (row c is a copy of c - 1)."""
    from featx.store import Rows

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    X = (rng.normal(size=(5, dim))[labels] + rng.normal(size=(n, dim))).astype(np.float32)
    copies = rng.choice(np.arange(1, n, 2), 40, replace=False)
    X[copies] = X[copies - 1] + rng.normal(scale=0.05, size=(40, dim))
    ids = np.arange(n)
    rows = Rows(X, np.array([f"{i:064x}" for i in ids]), np.array([f"{i:05d}.jpg" for i in ids]),
                np.array([f"c{label}" for label in labels]), np.where(ids % 2, "validation", "train"),
                np.zeros(n, np.int64), np.zeros(n, np.int64))
    return rows, {frozenset((int(c) - 1, int(c))) for c in copies}


def _write_store(path, rows):
    from featx.store import StoreWriter

    fp = {"backbone": "synthetic", "feature_dim": rows.features.shape[1]}
    with StoreWriter(path, fingerprint=fp, fingerprint_id=fingerprint_id(fp)) as writer:
        writer.append(rows)


def _synthetic_store(path, n=3000, dim=256, seed=0):
    rows, planted = _synthetic_rows(n, dim, seed)
    _write_store(path, rows)
    return planted


def test_merged_shards_audit_like_one_store(tmp_path):
    from featx.store import merge_stores

    rows, planted = _synthetic_rows(1200, 64)
    _write_store(tmp_path / "whole.h5", rows)
    _write_store(tmp_path / "a.h5", rows.take(np.arange(0, 1200, 2)))  # shards split every copy pair
    _write_store(tmp_path / "b.h5", rows.take(np.arange(1, 1200, 2)))
    merge_stores(tmp_path / "merged.h5", [tmp_path / "a.h5", tmp_path / "b.h5"])
    found = {}
    for name in ("whole", "merged"):
        result = audit(tmp_path / f"{name}.h5", cv=3)
        assert result.n_rows == 1200
        found[name] = {frozenset((d.a["path"], d.b["path"])) for d in result.duplicates}
    as_paths = {frozenset(f"{i:05d}.jpg" for i in pair) for pair in planted}
    assert found["whole"] == found["merged"] == as_paths
    assert all(d.cross_split for d in result.duplicates)  # every copy pair straddles train/validation


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "centred"])
def test_ivf_neighbours_find_the_same_copies_as_exact(tmp_path, whiten):
    from featx.audit.duplicates import NEAR_THRESHOLDS, find_duplicates
    from featx.audit.neighbours import approximate_similarities, fit_embedding, nearest_neighbours
    from featx.store import FeatureStore

    planted = _synthetic_store(tmp_path / "s.h5")
    found = {}
    with FeatureStore(tmp_path / "s.h5") as store:
        embedding = fit_embedding(store, 1000, whiten=whiten)
        assert embedding.kind == ("whitened" if whiten else "centred")
        for method in ("exact", "ivf"):
            sims, idx, used = nearest_neighbours(store, embedding, 10, method=method, chunk_rows=1000)
            assert used == method and sims.shape == idx.shape == (3000, 10)
            assert not (idx == np.arange(3000)[:, None]).any()  # never its own neighbour
            pairs = find_duplicates(store, embedding, sims, idx, threshold=NEAR_THRESHOLDS[embedding.kind],
                                    approximate=approximate_similarities(embedding, method), chunk_rows=1000)
            found[method] = {frozenset((p.a["row"], p.b["row"])) for p in pairs}
            if method == "exact" or whiten:  # the search's own similarities are the embedding's: exact
                Z = embedding.apply(store.X)
                assert all(p.similarity == pytest.approx(float(Z[p.a["row"]] @ Z[p.b["row"]]), abs=1e-5)
                           for p in pairs)
    assert found["exact"] == planted
    assert len(found["ivf"] & planted) >= 0.95 * len(planted) and found["ivf"] <= planted


def test_whitening_gives_unit_variance_along_the_stores_main_directions(tmp_path):
    """The whitened embedding before normalisation: decorrelated, unit variance (up to the eigenvalue floor)."""
    from featx.audit.neighbours import WHITEN_DIMS, WHITEN_EPS, fit_embedding
    from featx.store import FeatureStore

    _synthetic_store(tmp_path / "s.h5")
    with FeatureStore(tmp_path / "s.h5") as store:
        X = store.X.astype(np.float64)
        embedding = fit_embedding(store, 700)  # chunks that do not divide the rows
    assert embedding.kind == "whitened" and embedding.name == f"whitened-{WHITEN_DIMS}"
    assert np.allclose(embedding.mean, X.mean(axis=0), atol=1e-4)
    W = (X - X.mean(axis=0)) @ embedding.projection
    cov = np.cov(W, rowvar=False, bias=True)
    lam = np.linalg.eigvalsh(np.cov(X, rowvar=False, bias=True))[::-1][:WHITEN_DIMS]
    assert np.allclose(np.diag(cov), lam / (lam + WHITEN_EPS * lam.mean()), atol=1e-3)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    Z = embedding.apply(X[:5])
    assert Z.shape == (5, WHITEN_DIMS) and np.allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5)


@pytest.mark.large
def test_audit_html_renders_in_chromium(planted, tmp_path):
    from browser import render_in_chromium

    assert main(["audit", str(planted["store"]), "--out", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "audit.html"
    assert json.loads((tmp_path / "report" / "audit.json").read_text())["schema"] == 1
    facts = render_in_chromium(page, tmp_path)
    assert {"duplicates", "label-issues", "outliers", "balance"} <= set(facts["ids"])
    assert facts["images"] >= 5 and facts["images_decoded"] == facts["images"], facts["undecoded"]
    assert facts["tables"] == 1 and facts["css_rules"] and facts["css_rules"][0] > 10
    text = facts["text"]
    assert text.index("Duplicates") < text.index("Likely label errors") < text.index("Outliers")
    assert "LEAK" in text and "flipped_flower.jpg" in text and "astronaut.jpg" in text
    assert facts["screenshot_std"] > 10


def test_stores_too_large_for_memory_use_the_streaming_probe(planted, monkeypatch):
    import featx.audit.labels

    monkeypatch.setattr(featx.audit.labels, "IN_MEMORY_FLOATS", 0)  # every store counts as large
    result = audit(planted["store"])
    assert result.settings["label_probe"] == "lda-halves"
    flagged = {i.path: i for i in result.label_issues}
    assert FLIPPED in flagged and flagged[FLIPPED].suggested == "flower"
    assert result.outliers[0].path == OFF_TOPIC  # the same pass scores the outliers


@pytest.mark.parametrize("slab_columns", [None, 100])
def test_blocked_recheck_matches_the_direct_similarity(planted, tmp_path, monkeypatch, slab_columns):
    """The near-duplicate re-check reads column slabs of all rows; its similarities are the direct
    computation's on real photo features, and on a store whose journal replaces and adds rows."""
    import featx.audit.duplicates as duplicates
    from featx.audit.neighbours import feature_mean, normalise
    from featx.store import FeatureStore, Rows, StoreWriter

    def check(store):
        if slab_columns:  # several slabs, the last one narrower
            monkeypatch.setattr(duplicates, "_SLAB_BYTES", len(store) * 4 * slab_columns)  # float32 slabs
        mean = feature_mean(store, 7)
        a, b = np.triu_indices(len(store), 1)
        Z = normalise(store.X, mean)
        blocked = duplicates._exact_similarity(store, mean, np.stack([a, b], axis=1), chunk_rows=7)
        np.testing.assert_allclose(blocked, np.einsum("nd,nd->n", Z[a], Z[b]), atol=1e-6)
        return blocked

    with FeatureStore(planted["store"]) as store:
        assert store.feature_dim > 200 and len(store) > 40
        assert check(store).max() > 0.9  # the planted copy's pair is among them

    rows, _ = _synthetic_rows(120, 256)
    fp = {"backbone": "synthetic", "feature_dim": 256}
    with StoreWriter(tmp_path / "j.h5", fingerprint=fp, fingerprint_id=fingerprint_id(fp),
                     feature_dtype="float16") as writer:
        writer.append(rows.take(np.arange(100)))
    rng = np.random.default_rng(1)
    later = rows.take(np.r_[3, 50, 77, 100:120])  # three replaced paths, twenty new ones
    later = Rows(rng.normal(size=later.features.shape).astype(np.float32), *(getattr(later, f) for f in Rows.FIELDS))
    with StoreWriter(tmp_path / "j.h5", fingerprint=fp, fingerprint_id=fingerprint_id(fp),
                     feature_dtype="float16") as writer:
        writer.append(later)
        with FeatureStore(tmp_path / "j.h5") as store:  # read before the writer consolidates
            assert store.pending_parts == 1 and len(store) == 120
            check(store)
