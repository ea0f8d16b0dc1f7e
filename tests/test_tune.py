"""featx tune: the recipe search on a tiny real photo set with the vendored MobileNet-0.25."""

from __future__ import annotations

import json

import pytest

from conftest import TEST_SIZE, make_photo_set, run_cli

from featx.config import BackboneConfig
from featx.store import FeatureStore
from featx.tune import RecipeRow, _choose, tune

SMALL = BackboneConfig("mobilenet_0.25", image_size=TEST_SIZE)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_set(tmp_path_factory.mktemp("tune") / "photos", classes=("cat", "flower", "coffee"), n=10)


def _splits_read(monkeypatch) -> list[str]:
    """Record every split read from a store (to check what saw the held-out split)."""
    reads: list[str] = []
    original = FeatureStore.split

    def split(self, name, **kwargs):
        reads.append(name)
        return original(self, name, **kwargs)

    monkeypatch.setattr(FeatureStore, "split", split)
    return reads


def test_tune_scores_on_train_keeps_stores_and_uses_held_out_once(photos, tmp_path, monkeypatch):
    reads = _splits_read(monkeypatch)
    options = dict(backbone=SMALL, sizes=[112], views=["one", "flip"], layers=None, budget=2.5, cv=3, batch_size=8,
                   Cs=(0.1, 1.0))
    first = tune(photos, tmp_path / "out", **options)
    tried = [r for r in first.rows if r.tried]
    assert [r.recipe for r in first.rows] == ["96px one final", "112px one final", "96px flip final",
                                              "112px flip final"]
    assert [r.recipe for r in tried] == ["96px one final", "112px one final", "96px flip final"]
    not_tried = first.rows[-1]
    assert not not_tried.tried and "budget 2.5×" in not_tried.why_not and not_tried.estimated_cost > 2.5
    assert first.stores_made == 3 and all(r.seconds_per_image > 0 for r in tried)
    assert tried[0].cost_ratio == 1.0 and len({r.store for r in tried}) == 3
    assert first.chosen in {r.recipe for r in tried}
    assert reads.count("validation") == 1  # the chosen recipe's one evaluation; selection read train only
    assert 0 <= first.held_out["accuracy"] <= 1 and first.held_out["split"] == "validation"
    ci = first.held_out["accuracy_ci"]
    assert ci["low"] <= first.held_out["accuracy"] <= ci["high"] and ci["method"] == "Wilson score"
    vs = first.held_out["vs_default"]  # the gain over the default, judged on the same images, paired
    if first.chosen == "96px one final":
        assert vs is None
    else:
        assert vs["default"] == "96px one final" and vs["n"] == first.held_out["n"]
        assert vs["low"] <= vs["difference"] <= vs["high"] and 0 <= vs["p_value"] <= 1
        assert vs["decision"] == "too small"  # 6 held-out images cannot show a gain
    with FeatureStore(first.chosen_row.store) as fs:
        assert fs.fingerprint["image_size"] == [first.chosen_row.image_size] * 2
        assert fs.fingerprint.get("views", "one") == first.chosen_row.views

    reads.clear()
    again = tune(photos, tmp_path / "out", **options)
    assert again.stores_made == 0  # every store was kept: nothing recomputed
    assert [(r.recipe, r.cv_score_mean, r.seconds_per_image) for r in again.rows] == \
           [(r.recipe, r.cv_score_mean, r.seconds_per_image) for r in first.rows]
    assert again.chosen == first.chosen and reads.count("validation") == 1
    text = again.format()
    assert "← chosen" in text and "not tried: estimated" in text and "used once" in text
    assert "against the default: " in text


def test_tune_feature_sets_come_from_one_store(photos, tmp_path):
    result = tune(photos, tmp_path / "out", backbone=SMALL, sizes=[], views=["one"], layers=("final:max",),
                  budget=3, cv=3, batch_size=8, Cs=(0.1, 1.0))
    assert [r.recipe for r in result.rows] == ["96px one final:avg", "96px one final:max", "96px one all"]
    assert len({r.store for r in result.rows}) == 1 and result.stores_made == 1
    assert [r.n_features for r in result.rows] == [256, 256, 512]


def test_choice_is_the_cheapest_within_one_standard_error():
    def row(name, mean, std, cost):
        return RecipeRow(name, 96, "one", "final", None, cost, tried=True, cv_score_mean=mean, cv_score_std=std,
                         cost_ratio=cost)

    rows = [row("default", 0.90, 0.02, 1.0), row("big", 0.93, 0.02, 2.0), row("bigger", 0.94, 0.04, 3.0)]
    chosen, rule = _choose(rows, cv=4)  # best 0.94, standard error 0.02: "big" (0.93) is within it, cheaper
    assert chosen.recipe == "big" and "within one standard error" in rule
    chosen, _ = _choose(rows[:1] + [row("bigger", 0.99, 0.0, 3.0)], cv=4)
    assert chosen.recipe == "bigger"


def test_bad_arguments(photos, tmp_path):
    with pytest.raises(ValueError, match="views must be one of"):
        tune(photos, tmp_path, backbone=SMALL, views=["one", "mirror"])
    with pytest.raises(ValueError, match="budget is a cost ratio"):
        tune(photos, tmp_path, backbone=SMALL, budget=0.5)


@pytest.mark.large
def test_cli_tune_json(photos, tmp_path):
    args = ["tune", str(photos), "--out", str(tmp_path / "t"), "--backbone", "mobilenet_0.25", "--sizes", "112",
            "--views", "one", "--layers", "", "--max-recipes", "1", "--cv", "3", "--batch-size", "8", "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rows"][0]["recipe"] == "224px one final" and out["rows"][0]["tried"]
    assert "max-recipes 1" in out["rows"][1]["why_not"]
    assert out["options"]["extract"].startswith("featx extract --backbone mobilenet_0.25 --image-size")
