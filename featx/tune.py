"""A recipe search (``featx tune``): which input size, views and feature set give the best linear
probe for this data, at what extraction cost.

Each (image size, views) pair is one store under ``OUT/stores/``, extracted once with the sets
``final:<pooling>`` plus any extra ``layers`` side by side (one pass, featx.featuresets); each feature
set of a store, and their concatenation ``all``, is one recipe. A recipe is scored by the
cross-validated accuracy of an L2 logistic regression (C by CV) on the **train split only**.

Cost: an extraction's seconds per image (the extraction loop: decode, model, store; fixed batch size,
model traced beforehand) as measured when the store was made, recorded in ``OUT/costs.json`` so a
rerun, which recomputes nothing, still shows it; the ratio is against the default recipe (the
backbone's own size, one view, ``final``). Before extracting, a pair's cost is estimated as views ×
(size / default size)², and pairs estimated over ``budget`` are listed as not tried, with why (as are
pairs beyond ``max_recipes`` stores, cheapest first).

The choice: the best mean CV score; among recipes within one standard error of it (its CV std /
sqrt(folds)), the cheapest by the estimate (then the best CV), so a gain inside CV noise never buys
extra cost. The estimate ranks, not the measurement: one extraction's timing on a shared machine is
too noisy to rank by (224 px once measured slower than 256 px on a loaded 2-core host). The held-out split is
used once, for the chosen recipe: its classifier is fitted on train and evaluated there.

The ``featx tune`` command and the ``--views`` / ``--layers`` / ``--features`` options are in featx.cli.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from featx.config import DEFAULT_BACKBONE, BackboneConfig
from featx.fileio import write_bytes_atomically
from featx.featuresets import ALL, VIEW_COUNTS, VIEWS, canonical_layers, check_views

DEFAULT_BUDGET = 3.0  # the largest extraction-cost ratio vs the default recipe tried by default
COSTS_FILE = "costs.json"


@dataclass
class RecipeRow:
    """One recipe: an input size, views and feature set; its CV score on train and its cost."""

    recipe: str
    image_size: int
    views: str
    features: str
    layers: list[str] | None
    estimated_cost: float  # views × (size / default size)², before extracting
    tried: bool = False
    why_not: str = ""
    cv_score_mean: float | None = None
    cv_score_std: float | None = None
    n_features: int | None = None
    seconds_per_image: float | None = None  # measured when the store was made
    cost_ratio: float | None = None  # seconds_per_image / the default recipe's
    store: str | None = None


@dataclass
class TuneResult:
    rows: list[RecipeRow]
    chosen: str
    rule: str
    held_out: dict  # split, accuracy, model: the chosen recipe's classifier, evaluated once
    cv: int
    n_train: int
    stores_made: int  # extractions that ran the CNN in this call (0 on a rerun)
    seconds: float = 0.0
    options: dict = field(default_factory=dict)  # the extract / train options of the chosen recipe

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def chosen_row(self) -> RecipeRow:
        return next(r for r in self.rows if r.recipe == self.chosen)

    def format(self) -> str:
        from featx.metrics import format_table

        rows = [{**asdict(r), "cv": None if r.cv_score_mean is None else
                 f"{r.cv_score_mean:.4f} ± {r.cv_score_std:.4f}",
                 "s/image": None if r.seconds_per_image is None else f"{r.seconds_per_image * 1e3:.1f} ms",
                 "cost": None if r.cost_ratio is None else f"{r.cost_ratio:.2f}×",
                 "note": ("← chosen" if r.recipe == self.chosen else "") if r.tried else f"not tried: {r.why_not}"}
                for r in self.rows]
        row = self.chosen_row
        acc = self.held_out["accuracy"]
        return "\n".join([
            f"recipes scored by {self.cv}-fold CV accuracy on the train split ({self.n_train} images); "
            f"{self.stores_made} stores extracted now, the rest reused",
            format_table(rows, ["recipe", "n_features", "cv", "s/image", "cost", "note"]),
            f"rule: {self.rule}",
            f"use: {row.recipe}  ({self.options['extract']}; {self.options['train']})",
            f"held-out ({self.held_out['split']}, used once, for this recipe): accuracy {acc:.4f}"
            + (f" (95% CI [{ci['low']:.3f}, {ci['high']:.3f}])" if (ci := self.held_out.get("accuracy_ci")) else ""),
            f"against the default: {_gain_line(self.held_out)}",
        ])


def _default_sizes(default: int) -> list[int]:
    """The backbone's size and two larger ones (8/7 and 9/7 of it, multiples of 16: 224 → 256, 288)."""
    return [default] + [int(round(default * k / 7 / 16)) * 16 for k in (8, 9)]


def _store_name(cfg: BackboneConfig) -> str:
    tag = hashlib.sha256(",".join(cfg.layers or ()).encode()).hexdigest()[:8]
    return f"{cfg.name}-{cfg.image_size}px-{cfg.views}-{tag}.h5"


def _pairs(cfg: BackboneConfig, sizes: list[int], views: Sequence[str], budget: float,
           max_recipes: int | None) -> list[tuple[BackboneConfig, float, str]]:
    """(config, estimated cost, why not tried or "") per size × views, the default first, then cheapest."""
    default = sizes[0]
    pairs = sorted(((replace(cfg, image_size=s, views=v), VIEW_COUNTS[v] * (s / default) ** 2)
                    for s in sizes for v in views), key=lambda p: (p[0].image_size != default or p[0].views != "one",
                                                                    p[1]))
    out, n_tried = [], 0
    for pair_cfg, cost in pairs:
        why = ""
        if cost > budget + 1e-9:
            why = f"estimated {cost:.1f}× the default's cost > budget {budget:g}×"
        elif max_recipes is not None and n_tried >= max_recipes:
            why = f"over --max-recipes {max_recipes} (cheapest first)"
        n_tried += not why
        out.append((pair_cfg, cost, why))
    return out


def _extract_pair(data, store: Path, cfg: BackboneConfig, costs: dict, extract_options: dict) -> tuple[float, bool]:
    """Extract (or find already extracted) one store; its seconds per image and whether the CNN ran."""
    from featx.extract import extract

    bb = cfg.shared()  # built once per process: a rerun in the same process builds nothing
    # one call first, so the measured loop holds no tracing/compilation (which would swamp a small set's cost)
    bb.predict(np.zeros((extract_options["batch_size"], *bb.image_size, 3), np.uint8))
    summary = extract(data, store, backbone=bb, **extract_options)
    if summary.n_extracted:
        costs[store.name] = summary.loop_seconds / summary.n_extracted
    if store.name not in costs:
        raise ValueError(f"{store} was made outside featx tune, so its extraction cost is unknown; "
                         "move it away (or delete it) and rerun")
    return costs[store.name], bool(summary.n_extracted)


def _score_store(store: Path, cv: int, train_options: dict) -> tuple[dict[str, tuple[float, float, int]], int]:
    """CV accuracy (mean, std, width) of each feature set of a store (and ``all`` when several), train split only."""
    from featx import linear
    from featx.featuresets import feature_columns
    from featx.store import FeatureStore

    with FeatureStore(store) as fs:
        X, y = fs.split("train")
        if len(X) == 0:
            raise ValueError(f"store {store} has no labelled rows in the train split")
        names = list(fs.feature_sets) + ([ALL] if len(fs.feature_sets) > 1 else [])
        scores = {}
        for name in names:
            cols = feature_columns(fs.fingerprint, name)[1]
            best = linear.train(X[:, cols], y, cv=cv, label_names=fs.label_names, **train_options).best
            scores[name] = (best.cv_score_mean, best.cv_score_std, cols.stop - cols.start)
    return scores, len(X)


def _choose(rows: list[RecipeRow], cv: int) -> tuple[RecipeRow, str]:
    tried = [r for r in rows if r.tried]
    best = max(tried, key=lambda r: r.cv_score_mean)
    margin = best.cv_score_std / math.sqrt(cv)
    near = [r for r in tried if r.cv_score_mean >= best.cv_score_mean - margin]
    chosen = min(near, key=lambda r: (r.estimated_cost, -r.cv_score_mean))
    rule = (f"best CV {best.cv_score_mean:.4f} ({best.recipe}); of the {len(near)} recipes within one standard "
            f"error ({margin:.4f}) of it, the cheapest (estimated views × area)")
    return chosen, rule


def tune(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    backbone: str | BackboneConfig = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    sizes: Sequence[int] | None = None,
    views: Sequence[str] = VIEWS,
    layers: Sequence[str] | None = ("final:max",),
    budget: float = DEFAULT_BUDGET,
    max_recipes: int | None = None,
    cv: int = 5,
    Cs: Sequence[float] | None = None,
    classifier: str = "logreg",
    penalty: str = "l2",
    split: str = "validation",
    batch_size: int = 32,
    workers: int | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    n_jobs: int | None = None,
    progress: bool = False,
) -> TuneResult:
    """Try input sizes (default: the backbone's and two larger), views and feature sets (``final`` plus
    `layers`, in one pass), score each by CV on the train split, choose (see the module docstring),
    and evaluate the chosen recipe once on `split`. Stores are kept in `out_dir`; a rerun recomputes none.
    `Cs`: the grid of C searched by CV (default featx.linear.DEFAULT_CS)."""
    started = time.perf_counter()
    cfg = BackboneConfig.coerce(backbone, weights=weights).check()
    from featx.backbones import get_spec

    default = get_spec(cfg.name).input_size if cfg.image_size is None else int(cfg.image_size)
    sizes = _default_sizes(default) if sizes is None else [default, *[int(s) for s in sizes if int(s) != default]]
    for v in views:
        check_views(v)
    extra = [s for s in canonical_layers(layers, cfg.pooling) or () if s != f"final:{cfg.pooling}"]
    cfg = replace(cfg, layers=(f"final:{cfg.pooling}", *extra) if extra else None)
    if max_recipes is not None and max_recipes < 1:
        raise ValueError(f"max_recipes must be at least 1 (the default recipe), got {max_recipes}")
    if budget < 1:
        raise ValueError(f"budget is a cost ratio vs the default recipe, at least 1; got {budget}")
    out = Path(out_dir)
    (out / "stores").mkdir(parents=True, exist_ok=True)
    costs_path = out / COSTS_FILE
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else {}
    extract_options = dict(batch_size=batch_size, workers=workers, validation_fraction=validation_fraction,
                           test_fraction=test_fraction, split_seed=split_seed, progress=progress)
    train_options = dict(classifier=classifier, penalty=penalty, n_jobs=n_jobs,
                         **({} if Cs is None else {"Cs": np.asarray(Cs, float)}))
    rows, made, n_train = [], 0, 0
    for pair_cfg, estimate, why in _pairs(cfg, sizes, ["one", *[v for v in views if v != "one"]], budget,
                                          max_recipes):
        names = list(cfg.layers) + [ALL] if extra else ["final"]  # what _score_store will name them
        base = dict(image_size=pair_cfg.image_size, views=pair_cfg.views, layers=list(pair_cfg.layers or []) or None,
                    estimated_cost=round(estimate, 3))
        if why:
            rows += [RecipeRow(_recipe(pair_cfg, n), features=n, why_not=why, **base) for n in names]
            continue
        store = out / "stores" / _store_name(pair_cfg)
        seconds, ran = _extract_pair(data, store, pair_cfg, costs, extract_options)
        made += ran
        write_bytes_atomically(costs_path, json.dumps(costs, indent=1, sort_keys=True).encode())
        scores, n_train = _score_store(store, cv, train_options)
        for name, (mean, std, width) in scores.items():
            rows.append(RecipeRow(_recipe(pair_cfg, name), features=name, tried=True, cv_score_mean=mean,
                                  cv_score_std=std, n_features=width, seconds_per_image=seconds, store=str(store),
                                  **base))
    default_seconds = rows[0].seconds_per_image
    for r in rows:
        if r.tried:
            r.cost_ratio = round(r.seconds_per_image / default_seconds, 3)
    chosen, rule = _choose(rows, cv)
    held_out = _held_out(chosen, rows[0], out, cv, split, train_options)
    return TuneResult(rows, chosen.recipe, rule, held_out, cv, n_train, made, time.perf_counter() - started,
                      _use_options(cfg, chosen))


def _recipe(cfg: BackboneConfig, features: str) -> str:
    return f"{cfg.image_size}px {cfg.views} {features}"


def _held_out(chosen: RecipeRow, default: RecipeRow, out: Path, cv: int, split: str, train_options: dict) -> dict:
    """Fit the chosen recipe's classifier on train and evaluate it on `split` (the one use of that split
    for the choice), with its 95% interval; when it is not the default recipe, the default's classifier
    is judged on the same images and the gain gets a paired interval and an exact McNemar test (the
    verdict rule of featx.stats: a gain is claimed only when its interval excludes 0)."""
    from featx import stats
    from featx.classify import correct_by_path, evaluate_store, train_store

    model = out / "chosen.skops"
    train_store(chosen.store, model, cv=cv, features=chosen.features, **train_options)
    result = evaluate_store(model, chosen.store, split=split)
    held = {"split": split, "accuracy": result["accuracy"], "accuracy_ci": result.get("accuracy_ci"),
            "model": str(model), "n": result.get("n"), "vs_default": None}
    if chosen.recipe == default.recipe:
        return held
    default_model = out / "default.skops"
    train_store(default.store, default_model, cv=cv, features=default.features, **train_options)
    a = correct_by_path(model, chosen.store, split=split)
    b = correct_by_path(default_model, default.store, split=split)
    common = sorted(set(a) & set(b))  # the same images (a file skipped in one store only is left out)
    diff = stats.paired_difference_interval([a[p] for p in common], [b[p] for p in common])
    held["vs_default"] = {**diff.to_dict(), "decision": stats.decision(diff), "default": default.recipe}
    return held


def _gain_line(held: dict) -> str:
    """The chosen recipe against the default on the held-out images, in the verdict's words."""
    vs = held.get("vs_default")
    if not vs:
        return "the default recipe is the choice: nothing to compare"
    gain = (f"{vs['difference'] * 100:+.1f} points over {vs['default']} ({vs['confidence']:.0%} CI "
            f"[{vs['low'] * 100:.1f}, {vs['high'] * 100:.1f}], McNemar p = {vs['p_value']:.3f}, n = {vs['n']})")
    return {"significant": f"significant: {gain}", "too small": f"too few held-out images to decide: {gain}",
            }.get(vs["decision"], f"no significant difference: {gain}")


def _use_options(cfg: BackboneConfig, row: RecipeRow) -> dict:
    """How to get the chosen recipe with `featx extract` / `featx train`."""
    parts = [f"--backbone {cfg.name}", f"--image-size {row.image_size}"]
    if row.views != "one":
        parts.append(f"--views {row.views}")
    if row.features not in ("final", f"final:{cfg.pooling}"):
        parts.append(f"--layers {','.join(row.layers or [])}")
    train = f" --features {row.features}" if row.features not in ("final", f"final:{cfg.pooling}") else ""
    return {"extract": "featx extract " + " ".join(parts), "train": "featx train" + train}
