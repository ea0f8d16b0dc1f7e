"""`featx compare`: feature transfer and LP-FT on the same split, real photos, real weights, a real browser."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from browser import render_in_chromium
from conftest import TEST_SIZE, make_photo_set, run_cli

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"

CLASSES = ("cat", "flower")
PROBES = {"logreg-l2", "logreg-l1", "svm-l2", "svm-l1"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """`featx compare` through the real command line on a class-folder set (featx makes the split)."""
    root = make_photo_set(tmp_path_factory.mktemp("cmp") / "photos", classes=CLASSES, n=30)
    broken = root / "cat" / "broken.jpg"
    broken.write_bytes((root / "cat").glob("*.jpg").__next__().read_bytes()[:400])
    out = tmp_path_factory.mktemp("report")
    proc = run_cli("compare", str(root), "--out", str(out), "--backbone", "mobilenet_0.25", "--image-size",
                   str(TEST_SIZE), "--epochs", "2", "--batch-size", "16", "--cv", "3", "--validation-fraction",
                   "0.3", "--no-progress", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out, json.loads(proc.stdout), json.loads((out / "report.json").read_text())


def test_every_model_is_judged_once_on_the_same_held_out_images(compared):
    root, out, printed, report = compared
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == PROBES | {"lp-ft"}
    assert report["data"]["eval_split"] == "validation"
    n_val = report["data"]["splits"]["validation"]
    # 30% of each class held out (round(31 × 0.3) = 9 cats, 9 flowers); the broken file is skipped
    assert report["data"]["splits"]["train"] + n_val == 60 and n_val in (17, 18)
    for m in report["models"]:
        assert m["metrics"]["n"] == n_val and sum(map(sum, m["metrics"]["confusion_matrix"])) == n_val
        assert (out / m["model_path"]).stat().st_size == m["model_bytes"] > 0
        assert 0 <= m["metrics"]["accuracy"] <= 1 and m["metrics"]["roc_auc"] is not None
    assert [s["path"] for s in report["skipped"]] == ["cat/broken.jpg"]
    assert printed["verdict"] == report["verdict"]


def test_report_numbers_equal_the_saved_models_evaluated_by_the_commands(compared):
    root, out, _, report = compared
    models = {m["name"]: m for m in report["models"]}
    for name in ("svm-l2", "lp-ft"):
        path = out / models[name]["model_path"]
        proc = run_cli("evaluate", str(path), str(out / "features.h5"), "--split", "validation", "--json",
                       "--confusion-png", str(out / f"{name}.png"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        assert result["confusion_matrix"] == models[name]["metrics"]["confusion_matrix"]
        assert result["accuracy"] == pytest.approx(models[name]["metrics"]["accuracy"])


def test_held_out_images_were_never_used_for_fitting_or_selection(compared):
    import zipfile

    import h5py

    root, out, _, report = compared
    with zipfile.ZipFile(out / "models" / "finetuned.keras") as zf:
        meta = json.loads(zf.read("featx.json"))
    with h5py.File(out / "features.h5", "r") as f:
        splits = [s.decode() if isinstance(s, bytes) else s for s in f["split"][:]]
        sha = [s.decode() if isinstance(s, bytes) else s for s in f["sha256"][:]]
    held_out = {h for h, s in zip(sha, splits) if s == "validation"}
    trained_on = set(meta["train_sha256"])
    assert trained_on and held_out and not trained_on & held_out
    assert len(trained_on) == Counter(splits)["train"]
    assert meta["settings"]["monitor"] == "val_loss" and meta["n_monitor"] >= 2


def test_verdict_is_consistent_with_the_table(compared):
    _, _, _, report = compared
    verdict = report["verdict"]
    probes = [m for m in report["models"] if m["kind"] == "feature transfer"]
    # chosen by the CV score on the train split (first of equals), never by the held-out accuracy
    best = max(probes, key=lambda m: m["cv_score"])
    tuned = next(m for m in report["models"] if m["kind"] == "fine-tune")
    assert verdict["best_probe"] == best["name"] and verdict["best_probe_cv_score"] == best["cv_score"]
    assert verdict["best_probe_accuracy"] == pytest.approx(best["metrics"]["accuracy"])
    assert verdict["finetune_accuracy"] == pytest.approx(tuned["metrics"]["accuracy"])
    assert verdict["delta_points"] == pytest.approx(
        round(100 * (tuned["metrics"]["accuracy"] - best["metrics"]["accuracy"]), 1), abs=0.051)
    assert f"{verdict['delta_points']:+.1f} points" in verdict["text"]


def test_verdict_pairs_the_two_models_image_by_image(compared):
    _, _, _, report = compared
    verdict, n_val = report["verdict"], report["data"]["splits"]["validation"]
    probe = next(m for m in report["models"] if m["name"] == verdict["best_probe"])
    tuned = next(m for m in report["models"] if m["kind"] == "fine-tune")
    assert len(report["data"]["eval_images"]) == len(probe["correct"]) == len(tuned["correct"]) == n_val
    for m in (probe, tuned):  # per-image correctness agrees with the confusion matrix
        assert sum(m["correct"]) == sum(m["metrics"]["confusion_matrix"][i][i] for i in range(2))
        assert m["metrics"]["accuracy_ci"]["low"] <= m["metrics"]["accuracy"] <= m["metrics"]["accuracy_ci"]["high"]
    only_ft = sum(t and not p for t, p in zip(tuned["correct"], probe["correct"]))
    only_probe = sum(p and not t for t, p in zip(tuned["correct"], probe["correct"]))
    d = verdict["difference"]
    assert (d["only_a"], d["only_b"], d["n"]) == (only_ft, only_probe, n_val) and d["test"] == "exact McNemar"
    assert d["low"] <= d["difference"] <= d["high"]
    # ~18 held-out images: too few to decide unless the interval excludes 0
    if d["low"] > 0 or d["high"] < 0:
        assert verdict["decision"] == "significant" and "better by" in verdict["headline"]
    else:
        assert verdict["decision"] == "too small"
        assert verdict["headline"].startswith(f"Too few held-out images to decide (n = {n_val})")
    for m in report["models"]:  # thumbnails say what their number is
        kinds = {w["confidence_kind"] for w in m["wrong"]}
        assert kinds <= ({"margin"} if m["name"].startswith("svm") else {"probability"})


def test_report_renders_in_a_real_browser_with_every_table_and_image(compared, tmp_path):
    _, out, _, report = compared
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and 'src="assets' not in html
    facts = render_in_chromium(out / "report.html", tmp_path)
    assert facts["images"] > 0 and facts["images_decoded"] == facts["images"], facts["undecoded"]
    classes = Counter(facts["image_classes"])
    assert classes["confusion"] == 5 and classes["learning-curves"] == 1 and classes["embedding"] == 1
    assert classes["wrong"] == sum(len(m["wrong"]) for m in report["models"])
    assert "models" in facts["table_classes"] and facts["table_classes"].count("per-class") == 5
    assert "skipped" in facts["table_classes"] and "cat/broken.jpg" in facts["text"]
    assert report["verdict"]["text"] in " ".join(facts["text"].split())
    md = (out / "report.md").read_text()
    assert md.count("](assets/") >= 7 and all((out / a).is_file() for a in report["assets"])


def test_test_split_without_test_images_is_a_clear_error(tmp_path):
    root = make_photo_set(tmp_path / "set", classes=CLASSES, n=6)
    proc = run_cli("compare", str(root), "--out", str(tmp_path / "r"), "--backbone", "mobilenet_0.25",
                   "--split", "test")
    assert proc.returncode == 2 and "no images in the test split" in proc.stderr and "--test-fraction" in proc.stderr
    assert not os.path.exists(tmp_path / "r" / "features.h5")


def test_views_serve_the_probes_and_the_finetuned_network_sees_one_view(tmp_path):
    """compare(views="flip"): the store holds flip-averaged rows for the probes; fine-tuning starts from
    features of its own one-view network (the flip store cannot be its probe's source) and saves a
    one-view model."""
    from featx.compare import compare
    from featx.finetune import load_model
    from featx.store import FeatureStore

    root = make_photo_set(tmp_path / "photos", classes=CLASSES, n=12)
    result = compare(root, tmp_path / "out", backbone="mobilenet_0.25", image_size=TEST_SIZE, views="flip",
                     epochs=1, batch_size=16, cv=3, progress=False)
    with FeatureStore(tmp_path / "out" / "features.h5") as fs:
        assert fs.fingerprint["views"] == "flip" and len(fs) == 24
    finetuned = load_model(tmp_path / "out" / "models" / "finetuned.keras")
    assert "views" not in finetuned.info["backbone"]  # the starting backbone's fingerprint: one view
    assert result.verdict["decision"] == "too small" and result.verdict["n"] == 4  # round(12 × 0.2) per class
