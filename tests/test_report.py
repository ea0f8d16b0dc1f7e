"""Tests for featx.report: the compare report as JSON, Markdown and self-contained HTML."""

from __future__ import annotations

import copy
import json
import re
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

import browser
from browser import render_in_chromium
from conftest import photo_files
from featx.metrics import evaluate
from featx.report import compute_verdict, embedding_2d, write_report
from featx.stats import paired_difference_from_counts

NASTY = '<b>&"x'  # a class name that must come out escaped everywhere
LABELS = ["cat", "flower", NASTY]


def _predictions(n: int, n_wrong: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced true labels and predictions with exactly ``n_wrong`` mistakes (seeded)."""
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % k
    y_pred = y_true.copy()
    wrong = rng.choice(n, size=n_wrong, replace=False)
    y_pred[wrong] = (y_true[wrong] + 1 + rng.integers(0, k - 1, size=n_wrong)) % k
    return y_true, y_pred


def _model(name: str, kind: str, n_wrong: int, *, n: int = 200, train_seconds: float = 3.2,
           wrong: list | None = None, seed: int = 0, correct: list[bool] | None = None,
           cv_score: float | None = 0.93) -> dict:
    """One model of a report; ``correct`` (per-image, paired across models) overrides n and n_wrong."""
    if correct is not None:
        y_true = np.arange(len(correct)) % len(LABELS)
        y_pred = np.where(correct, y_true, (y_true + 1) % len(LABELS))
    else:
        y_true, y_pred = _predictions(n, n_wrong, len(LABELS), seed)
    return {
        "name": name,
        "kind": kind,
        "description": f"{name} (test model)",
        "metrics": evaluate(y_true, y_pred, label_names=LABELS),
        "train_seconds": train_seconds,
        "inference_seconds": 0.01,
        "inference_images_per_second": n / 0.01,
        "model_bytes": 12345,
        "model_path": f"models/{name}.skops",
        "cv_score": cv_score if kind == "feature transfer" else None,
        "correct": (y_true == y_pred).tolist(),
        "wrong": wrong or [],
    }


def _wrong_items() -> list[dict]:
    files = photo_files("cat", 3) + photo_files("flower", 2) + photo_files("rocket", 2)
    truths = ["cat"] * 3 + ["flower"] * 2 + [NASTY] * 2
    preds = ["flower", NASTY, "flower", "cat", NASTY, "cat", "flower"]
    return [
        {"path": str(f), "true": t, "pred": p, "confidence": round(0.99 - 0.05 * i, 2)}
        for i, (f, t, p) in enumerate(zip(files, truths, preds))
    ]


def _history() -> dict:
    return {
        "epoch": [0, 1, 2, 3, 4, 5, 6],
        "phase": ["probe", "head", "head", "finetune", "finetune", "finetune", "finetune"],
        "loss": [None, 0.9, 0.6, 0.45, 0.38, 0.33, 0.31],
        "accuracy": [None, 0.70, 0.80, 0.86, 0.89, 0.91, 0.92],
        "val_loss": [0.5, 0.48, 0.42, 0.36, 0.33, 0.32, 0.34],
        "val_accuracy": [0.85, 0.86, 0.88, 0.90, 0.91, 0.915, 0.91],
    }


def make_report(*, probe_wrong=(19, 25), finetune_wrong: int | None = 18, random_weights=False,
                embedding: dict | None = None) -> dict:
    """A realistic compare report: 3 classes, 200 eval images, real flower photos as the wrong ones."""
    wrong = _wrong_items()
    models = [
        _model("svm-l2", "feature transfer", probe_wrong[0], wrong=wrong[:5], seed=1),
        _model("logreg-l1", "feature transfer", probe_wrong[1], train_seconds=5.0, wrong=wrong[2:], seed=2),
    ]
    finetune = None
    if finetune_wrong is not None:
        # 400 s of fine-tuning vs 3.2 s probe + 25.1 s extraction -> 14x the time
        models.append(_model("finetune", "fine-tune", finetune_wrong, train_seconds=400.0, wrong=wrong, seed=3))
        finetune = {"history": _history(), "best_epoch": 5,
                    "settings": {"epochs": 6, "unfreeze": 2, "lr": 1e-4, "augment": ["flip", "rotate"]}}
    return {
        "title": "featx compare: photos <test>",
        "created": "2026-11-28T10:00:00+0000",
        "data": {"source": "/data/photos & co", "label_names": LABELS,
                 "splits": {"train": 900, "validation": 200}, "eval_split": "validation"},
        "backbone": {"name": "mobilenet_0.25", "weights": "none" if random_weights else "imagenet",
                     "image_size": [96, 96], "fingerprint_id": "abcd1234", "random_weights": random_weights},
        "versions": {"featx": "0.1.0", "keras": "3.15.1", "backend": "tensorflow"},
        "extraction": {"seconds": 25.1, "images": 1100, "images_per_second": 43.8},
        "models": models,
        "finetune": finetune,
        "embedding": embedding,
        "skipped": [{"path": "bad <1>.jpg", "kind": "truncated", "reason": "image file is truncated"},
                    {"path": "notes.jpg", "kind": "not_an_image", "reason": "a text file & not an image"}],
        "notes": ["2 files with identical content have different labels"],
    }


@pytest.fixture(scope="module")
def embedding() -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 32)) + labels[:, None] * 1.5
    return embedding_2d(features, labels, seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory, embedding):
    out = tmp_path_factory.mktemp("report")
    report = make_report(embedding=embedding)
    start = time.perf_counter()
    paths = write_report(report, out)
    return {"report": report, "paths": paths, "out": out, "seconds": time.perf_counter() - start}


class _TagChecker(HTMLParser):
    """Every element closed in order, ids unique: the structural half of HTML validity."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.errors: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
        else:
            self.stack.pop()


def _check_html_structure(page: str) -> list[str]:
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.doctype == "doctype html"
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed: {checker.stack}"
    assert len(checker.ids) == len(set(checker.ids)), "duplicate ids"
    return checker.ids


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# Files, JSON, Markdown, HTML text


def test_writes_the_three_files_and_assets(written):
    out, paths = written["out"], written["paths"]
    assert set(paths) == {"json", "md", "html"}
    for key, name in (("json", "report.json"), ("md", "report.md"), ("html", "report.html")):
        assert paths[key] == str(out / name) and (out / name).is_file()
    data = _strict_json((out / "report.json").read_text(encoding="utf-8"))
    assets = data["assets"]
    # 3 confusion matrices, learning curves, embedding, 7 distinct thumbnails
    assert len([a for a in assets if a.startswith("assets/confusion-")]) == 3
    assert "assets/learning-curves.png" in assets and "assets/embedding.png" in assets
    assert len([a for a in assets if a.startswith("assets/wrong-")]) == 7
    for rel in assets:
        with Image.open(out / rel) as im:
            im.load()
            assert im.format in ("PNG", "JPEG")
            if rel.startswith("assets/wrong-"):
                assert im.format == "JPEG" and max(im.size) <= 160
    assert written["seconds"] < 30


def test_json_round_trips_the_input(written):
    data = _strict_json((written["out"] / "report.json").read_text(encoding="utf-8"))
    verdict = data.pop("verdict")
    data.pop("assets")
    assert data == json.loads(json.dumps(written["report"]))
    assert verdict["best_probe"] == "svm-l2" and verdict["finetune"] == "finetune"


def test_json_is_strict_with_nan_and_numpy(tmp_path):
    report = make_report(finetune_wrong=None)
    report["models"][0]["cv_score"] = float("nan")
    report["models"][0]["train_seconds"] = np.float32(2.5)
    report["models"][1]["inference_seconds"] = float("inf")
    report["models"][1]["model_bytes"] = np.int64(777)
    paths = write_report(report, tmp_path)
    text = open(paths["json"], encoding="utf-8").read()
    assert "NaN" not in text and "Infinity" not in text
    data = _strict_json(text)
    assert data["models"][0]["cv_score"] is None
    assert data["models"][0]["train_seconds"] == 2.5
    assert data["models"][1]["inference_seconds"] is None
    assert data["models"][1]["model_bytes"] == 777
    assert np.isnan(report["models"][0]["cv_score"])  # the caller's dict is left alone


def test_markdown_has_verdict_tables_and_relative_assets(written):
    md = (written["out"] / "report.md").read_text(encoding="utf-8")
    data = json.loads((written["out"] / "report.json").read_text(encoding="utf-8"))
    assert md.startswith("# featx compare: photos &lt;test&gt;\n")
    # the verdict comes first, before any table
    assert md.index("No significant difference: fine-tuning 0.910 vs linear probe svm-l2 0.905 (+0.5 points, "
                    "95% CI \\[") < md.index("| model |")
    assert "at 14\u00d7 the training time (400 s vs 28.3 s for feature extraction" in md
    assert re.search(r"\| 0\.905 \| \\\[0\.8\d\d, 0\.9\d\d\\\] \|", md)  # accuracy and its interval
    assert "95% intervals: accuracy by Wilson score" in md and "best train-split CV score" in md
    for header in ("| model | kind | accuracy | acc. 95% CI | balanced acc. | precision | recall | F1 | F1 95% CI "
                   "| ROC-AUC |",
                   "| class | precision | recall | F1 | support |", "| path | kind | reason |"):
        assert header in md
    for rel in data["assets"]:
        if not rel.startswith("assets/wrong-"):
            assert f"]({rel})" in md
    assert re.search(r"!\[[^\]]*\]\(assets/wrong-[0-9a-f]{12}\.jpg\)", md)
    assert "**0.910**" in md  # the fine-tuned model's accuracy, best in its column
    assert "**3.20**" in md and "**0.01**" not in md  # fastest training; equal inference times: none
    assert "&lt;b&gt;&amp;\"x" in md and NASTY not in md  # no raw HTML from a class name
    assert "2 files with identical content have different labels" in md


def test_html_is_self_contained_and_escaped(written):
    page = (written["out"] / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>\n")
    ids = _check_html_structure(page)
    assert {"verdict", "models-table", "finetune", "embedding", "skipped", "notes"} <= set(ids)
    assert '<meta charset="utf-8">' in page
    assert "http://" not in page and "https://" not in page
    assert 'src="assets' not in page and "<script" not in page.lower() and "<link" not in page.lower()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert NASTY not in page
    assert "&lt;b&gt;&amp;&quot;x" in page
    assert "bad &lt;1&gt;.jpg" in page and "/data/photos &amp; co" in page
    for marker in ('<table class="models" id="models-table">', '<table class="per-class">',
                   '<img class="confusion"', '<img class="learning-curves"', '<img class="embedding"',
                   '<img class="wrong"', '<table class="skipped">', '<table class="history">',
                   'id="verdict"', '<ul class="notes">'):
        assert marker in page, marker
    # the best value of a column is bold: the fine-tuned model's accuracy
    assert '<td class="best num"><strong>0.910</strong></td>' in page


def test_binary_problem_shows_roc_auc(tmp_path):
    rng = np.random.default_rng(6)
    y_true = np.arange(100) % 2
    scores = np.clip(y_true * 0.6 + rng.normal(0.2, 0.25, size=100), 0, 1)
    report = make_report(finetune_wrong=None)
    report["data"]["label_names"] = ["cat", "dog"]
    for model in report["models"]:
        model["metrics"] = evaluate(y_true, (scores > 0.5).astype(int), label_names=["cat", "dog"],
                                    y_score=scores)
        model["wrong"] = []
    auc = report["models"][0]["metrics"]["roc_auc"]
    paths = write_report(report, tmp_path)
    md = open(paths["md"], encoding="utf-8").read()
    row = next(line for line in md.splitlines() if line.startswith("| svm-l2 |"))
    assert f"| {auc:.3f} |" in row and "\u2013" not in row.split("|")[10]


def test_output_is_deterministic(tmp_path, embedding):
    a = write_report(make_report(embedding=embedding), tmp_path / "a")
    b = write_report(make_report(embedding=embedding), tmp_path / "b")
    for key in ("json", "md", "html"):
        assert open(a[key], "rb").read() == open(b[key], "rb").read(), key


def test_rewrite_removes_stale_assets_only(tmp_path):
    write_report(make_report(), tmp_path)
    mine = tmp_path / "assets" / "keep-me.txt"
    mine.write_text("not the report's")
    report = make_report()
    report["models"] = report["models"][:1]
    report["finetune"] = None
    write_report(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    on_disk = sorted(f"assets/{p.name}" for p in (tmp_path / "assets").iterdir() if p.suffix != ".txt")
    assert on_disk == sorted(data["assets"])
    assert mine.exists()


# --------------------------------------------------------------------------------------------
# Verdict


def _paired_report(both: int, only_ft: int, only_probe: int, neither: int, *, probe_cv=(0.95, 0.90),
                   record_correct: bool = True) -> dict:
    """A report whose fine-tuned model and probe svm-l2 are right on given images: the paired 2x2 table.
    logreg-l1 is more accurate on the held-out split than svm-l2 but has the lower CV score."""
    ft_right = [True] * both + [True] * only_ft + [False] * only_probe + [False] * neither
    probe_right = [True] * both + [False] * only_ft + [True] * only_probe + [False] * neither
    report = make_report()
    report["models"] = [
        _model("svm-l2", "feature transfer", 0, correct=probe_right, cv_score=probe_cv[0]),
        _model("logreg-l1", "feature transfer", 0, correct=[True] * len(ft_right), cv_score=probe_cv[1]),
        _model("finetune", "fine-tune", 0, correct=ft_right, train_seconds=400.0),
    ]
    if not record_correct:
        for model in report["models"]:
            del model["correct"]
    return report


def _expected(both, only_ft, only_probe, neither) -> tuple[str, str]:
    """The interval and p-value as the headline words them, from featx.stats directly."""
    diff = paired_difference_from_counts(both, only_ft, only_probe, neither)
    ci = f"95% CI [{diff.low * 100:.1f}, {diff.high * 100:.1f}]"
    return ci, ("p < 0.001" if diff.p_value < 0.001 else f"p = {diff.p_value:.3f}")


def test_verdict_significant_when_the_interval_excludes_zero():
    verdict = compute_verdict(_paired_report(170, 20, 4, 6))
    ci, p = _expected(170, 20, 4, 6)
    assert verdict["headline"] == f"Fine-tuning is better by 8.0 points ({ci}, McNemar {p})"
    assert verdict["decision"] == "significant" and verdict["winner"] == "fine-tune" and verdict["n"] == 200
    d = verdict["difference"]
    assert d["low"] > 0 and d["difference"] == pytest.approx(0.08) and d["only_a"] == 20 and d["only_b"] == 4
    assert d["p_value"] == pytest.approx(binomtest(4, 24, 0.5).pvalue) and d["p_value"] < 0.05
    # the other way round: the probe's advantage, its interval in its own direction
    verdict = compute_verdict(_paired_report(170, 4, 20, 6))
    assert verdict["winner"] == "feature transfer"
    assert verdict["headline"].startswith("Linear probe svm-l2 is better by 8.0 points (95% CI [")
    low, high = re.search(r"CI \[(-?[\d.]+), (-?[\d.]+)\]", verdict["headline"]).groups()
    assert 0 < float(low) < 8.0 < float(high)


def test_verdict_one_image_in_a_thousand_is_no_significant_difference():
    # the case: 0.942 vs 0.941 on 1,000 images used to read "Fine-tuning wins by 0.1 points"
    verdict = compute_verdict(_paired_report(911, 31, 30, 28))
    ci, p = _expected(911, 31, 30, 28)
    assert p == "p = 1.000"
    assert verdict["headline"] == (f"No significant difference: fine-tuning 0.942 vs linear probe svm-l2 0.941 "
                                   f"(+0.1 points, {ci}, McNemar {p})")
    assert verdict["decision"] == "not significant" and verdict["winner"] == "undecided"
    assert verdict["difference"]["low"] < 0 < verdict["difference"]["high"]


def test_verdict_too_few_images_to_decide():
    # 40 held-out images, "wins by 2.5 points" was one image
    verdict = compute_verdict(_paired_report(35, 2, 1, 2))
    assert verdict["headline"].startswith("Too few held-out images to decide (n = 40): fine-tuning 0.925 vs "
                                          "linear probe svm-l2 0.900 (+2.5 points, 95% CI [")
    assert verdict["decision"] == "too small" and verdict["winner"] == "undecided"
    # a difference that is significant even on 40 images is still reported as one
    verdict = compute_verdict(_paired_report(28, 10, 0, 2))
    assert verdict["decision"] == "significant" and verdict["headline"].startswith("Fine-tuning is better by 25.0")


def test_best_probe_is_chosen_by_cv_score_not_by_held_out_accuracy(tmp_path):
    report = _paired_report(170, 20, 4, 6)
    verdict = compute_verdict(report)
    # logreg-l1 is right on every held-out image, but svm-l2 had the better train-split CV score
    assert verdict["best_probe"] == "svm-l2" and verdict["best_probe_cv_score"] == 0.95
    assert verdict["best_probe_accuracy"] == pytest.approx(0.87)
    assert "chosen by train-split CV score 0.950" in verdict["text"]
    verdict = compute_verdict(_paired_report(170, 20, 4, 6, probe_cv=(0.90, 0.95)))
    assert verdict["best_probe"] == "logreg-l1" and verdict["best_probe_accuracy"] == 1.0
    # no CV score anywhere: the first probe, said in a warning (never the held-out best)
    verdict = compute_verdict(_paired_report(170, 20, 4, 6, probe_cv=(None, None)))
    assert verdict["best_probe"] == "svm-l2" and "No linear probe records a train-split CV score" in \
        verdict["warnings"][0]
    paths = write_report(report, tmp_path)
    page = open(paths["html"], encoding="utf-8").read()
    assert "Fine-tuning is better by 8.0 points (95% CI [" in page and "McNemar p = 0.00" in page
    assert re.search(r'<td class="num">\[0\.8\d\d, 0\.9\d\d\]</td>', page)  # svm-l2's accuracy interval


def test_verdict_without_per_image_predictions_is_not_tested():
    verdict = compute_verdict(_paired_report(170, 20, 4, 6, record_correct=False))
    assert verdict["decision"] == "not tested" and verdict["winner"] is None and verdict["difference"] is None
    assert verdict["headline"] == ("Not tested: fine-tuning 0.950 vs linear probe svm-l2 0.870 (+8.0 points); the "
                                   "report records no per-image predictions to pair")


def test_verdict_cost_and_text():
    verdict = compute_verdict(make_report())
    # 400 s fine-tune vs the best probe's training (3.2 s) + 25.1 s extraction
    ratio = 400.0 / (3.2 + 25.1)
    assert verdict["time_ratio"] == round(ratio, 2)
    assert verdict["delta_points"] == 0.5 and verdict["warnings"] == []
    assert verdict["text"].startswith("Fine-tuning (finetune): 0.910 [0.")
    assert f"at {ratio:.0f}\u00d7 the training time (400 s vs " in verdict["text"]


def test_verdict_without_finetune(tmp_path):
    report = make_report(finetune_wrong=None)
    verdict = compute_verdict(report)
    assert verdict["best_probe"] == "svm-l2" and verdict["finetune"] is None
    assert verdict["delta_points"] is None and verdict["time_ratio"] is None
    assert verdict["headline"] == "Best linear probe: svm-l2, accuracy 0.905"
    paths = write_report(report, tmp_path)
    page = open(paths["html"], encoding="utf-8").read()
    assert "no fine-tuned model" in page and 'class="learning-curves"' not in page


def test_verdict_only_finetune_and_no_models():
    report = make_report()
    report["models"] = report["models"][2:]
    verdict = compute_verdict(report)
    assert verdict["best_probe"] is None and verdict["finetune_accuracy"] == pytest.approx(0.91)
    assert verdict["winner"] == "fine-tune" and "no linear probe" in verdict["text"]
    report["models"] = []
    assert compute_verdict(report)["headline"] == "No model was evaluated"


def test_random_weights_warning(tmp_path):
    paths = write_report(make_report(random_weights=True), tmp_path)
    page = open(paths["html"], encoding="utf-8").read()
    md = open(paths["md"], encoding="utf-8").read()
    assert 'class="warning"' in page and "RANDOM WEIGHTS" in page
    _check_html_structure(page)
    assert page.index("RANDOM WEIGHTS") < page.index('<table class="models"')
    assert "WARNING: RANDOM WEIGHTS" in md and md.index("RANDOM WEIGHTS") < md.index("| model |")
    data = json.loads(open(paths["json"], encoding="utf-8").read())
    assert data["verdict"]["warnings"] and "RANDOM WEIGHTS" in data["verdict"]["warnings"][0]


def test_unreadable_thumbnails_become_placeholders(tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("<html>not an image</html>")
    report = make_report(finetune_wrong=None)
    report["models"][0]["wrong"] = [
        {"path": str(tmp_path / "gone.jpg"), "true": "cat", "pred": NASTY, "confidence": 0.97,
         "confidence_kind": "probability"},
        {"path": str(not_image), "true": "cat", "pred": "flower", "confidence": None},
        {"path": str(photo_files("coffee", 1)[0]), "true": "flower", "pred": "cat", "confidence": 1.4,
         "confidence_kind": "margin"},
    ]
    report["models"][1]["wrong"] = []
    paths = write_report(report, tmp_path / "out")
    page = open(paths["html"], encoding="utf-8").read()
    assert page.count('class="wrong-item missing"') == 2
    assert "image unavailable: file not found" in page and "not_an_image" in page
    assert page.count('<img class="wrong"') == 1
    # the number says what it is: a probability, or an SVM margin (which can exceed 1)
    assert "cat \u2192 &lt;b&gt;&amp;&quot;x (p = 0.97)" in page and "flower \u2192 cat (margin 1.40)" in page
    md = open(paths["md"], encoding="utf-8").read()
    assert "image unavailable (file not found)" in md


# --------------------------------------------------------------------------------------------
# The browser


@pytest.mark.large
def test_html_renders_in_chromium(written, tmp_path):
    page = (written["out"] / "report.html").read_text(encoding="utf-8")
    facts = render_in_chromium(written["paths"]["html"], tmp_path)
    assert facts["title"] == "featx compare: photos <test>"
    assert facts["tables"] == page.count("<table") > 0
    n_img = page.count("<img ")
    assert facts["images"] == n_img == 3 + 1 + 1 + (5 + 5 + 7)  # confusion, curves, map, thumbnails
    # every image decoded, although the copy sits away from assets/ and the page's CSP allows
    # only data: images: they are all embedded
    assert facts["images_decoded"] == n_img, facts["undecoded"]
    assert sorted(set(facts["image_classes"])) == ["confusion", "embedding", "learning-curves", "wrong"]
    assert facts["image_classes"].count("confusion") == 3
    for cls in ("models", "setup", "per-class", "history", "finetune-settings", "skipped"):
        assert cls in facts["table_classes"], cls
    assert facts["table_classes"].count("per-class") == 3
    for ident in ("verdict", "models-table", "finetune", "embedding", "skipped", "notes"):
        assert ident in facts["ids"], ident
    assert "No significant difference: fine-tuning 0.910 vs linear probe svm-l2 0.905 (+0.5 points, 95% CI [" \
        in facts["text"]
    assert NASTY in facts["text"]  # escaped in the source, displayed as typed
    assert facts["css_rules"] and facts["css_rules"][0] > 20  # the inline stylesheet applies
    assert facts["screenshot_size"] == [1280, 2000]
    assert facts["screenshot_std"] > 10, "the screenshot is blank"


def test_missing_chromium_fails_not_skips(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no browser on PATH
    monkeypatch.delenv("FEATX_CHROMIUM", raising=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        browser.find_chromium()


# --------------------------------------------------------------------------------------------
# embedding_2d


def test_embedding_tsne_is_deterministic(embedding):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 32)) + labels[:, None] * 1.5
    again = embedding_2d(features, labels, seed=0)
    assert embedding["method"] == "tsne" and again == embedding
    assert embedding["n_total"] == embedding["n_points"] == 120
    assert len(embedding["points"]) == 120 and embedding["labels"] == labels.tolist()
    assert all(isinstance(v, float) for p in embedding["points"] for v in p)
    json.dumps(embedding, allow_nan=False)


def test_embedding_small_sets_use_pca():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6, 10))
    emb = embedding_2d(features, [0, 1, 0, 1, 2, 2])
    assert emb["method"] == "pca" and emb["n_total"] == 6 and len(emb["points"]) == 6
    assert len(emb["explained_variance"]) == 2 and 0 < sum(emb["explained_variance"]) <= 1 + 1e-9
    forced = embedding_2d(features, [0, 1, 0, 1, 2, 2], method="tsne")
    assert forced["method"] == "pca" and "t-SNE needs at least 10 points" in forced["note"]
    assert embedding_2d(rng.normal(size=(30, 4)), np.arange(30) % 2, method="pca")["method"] == "pca"


def test_embedding_subsample_keeps_every_class():
    rng = np.random.default_rng(4)
    labels = np.array([0] * 500 + [1] * 40 + [2] * 3 + [3] * 1)
    features = rng.normal(size=(labels.size, 16))
    emb = embedding_2d(features, labels, max_points=50, seed=7)
    assert emb["method"] == "pca"  # n > max_points
    assert emb["n_total"] == 544 and emb["n_points"] == len(emb["points"]) == 50
    assert set(emb["labels"]) == {0, 1, 2, 3}
    assert [labels[i] for i in emb["indices"]] == emb["labels"]
    assert emb == embedding_2d(features, labels, max_points=50, seed=7)
    assert emb["indices"] != embedding_2d(features, labels, max_points=50, seed=8)["indices"]
    # explicit t-SNE runs on the subsample
    tsne = embedding_2d(features, labels, method="tsne", max_points=60, seed=0)
    assert tsne["method"] == "tsne" and tsne["n_points"] == 60 and set(tsne["labels"]) == {0, 1, 2, 3}


def test_embedding_degenerate_features():
    labels = np.arange(40) % 2
    one_d = embedding_2d(np.linspace(0, 1, 40), labels)  # (n,) features
    assert len(one_d["points"]) == 40 and one_d["method"] == "tsne"
    one_col = embedding_2d(np.linspace(0, 1, 40)[:, None], labels, method="pca")
    assert [p[1] for p in one_col["points"]] == [0.0] * 40
    assert one_col["explained_variance"] == [1.0, 0.0]
    constant = embedding_2d(np.ones((40, 8)), labels)
    assert constant["method"] == "pca" and "identical" in constant["note"]
    assert constant["points"] == [[0.0, 0.0]] * 40 and constant["explained_variance"] == [0.0, 0.0]
    with_nan = np.random.default_rng(5).normal(size=(12, 3))
    with_nan[[2, 7]] = np.nan
    emb = embedding_2d(with_nan, np.arange(12) % 3)
    assert emb["n_total"] == 12 and emb["n_points"] == 10 and 2 not in emb["indices"]
    single = embedding_2d(np.ones((1, 5)), [0])
    assert single["points"] == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="rows"):
        embedding_2d(np.ones((4, 2)), [0, 1])
    with pytest.raises(ValueError, match="method"):
        embedding_2d(np.ones((4, 2)), [0, 1, 0, 1], method="umap")


def test_degenerate_report_renders(tmp_path):
    """One model, no finetune, a constant-feature embedding, nothing skipped: still a report."""
    report = make_report(finetune_wrong=None, embedding=embedding_2d(np.ones((5, 3)), [0, 1, 2, 0, 1]))
    report["models"] = report["models"][:1]
    report["skipped"], report["notes"] = [], []
    report["backbone"], report["versions"], report["extraction"] = {}, {}, {}
    paths = write_report(copy.deepcopy(report), tmp_path)
    page = open(paths["html"], encoding="utf-8").read()
    assert "Skipped files (0)" in page and 'class="embedding"' in page
    _check_html_structure(page)
    assert '<td class="best' not in page  # nothing to compare with one model
