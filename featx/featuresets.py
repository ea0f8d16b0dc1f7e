"""Feature recipes beyond one view of the last block: averaged views and several layers per pass.

**Views** (``views=``): ``"one"`` (the image as decoded, the default), ``"flip"`` (the image and its
mirror) or ``"flip+crops"`` (the image, its mirror, the central 7/8 crop resized back to the input size
and that crop's mirror). The views are made from the decoded pixels inside the model, on the device
(keras.ops only, so every backend runs them), go through the same network as one batch, and their pooled
features are averaged into one row: decoding happens once per image and the store keeps one row per image.

**Layers** (``layers=``): pooled features of several named blocks from one pass through the network
(a multi-output model), side by side in one row. Each entry is ``"LAYER"`` or ``"LAYER:POOLING"``
(POOLING ``avg`` or ``max``; default the backbone's ``pooling``); ``LAYER`` is a layer name of the
keras.applications network (``model.summary()``) or ``final``, the block featx takes by default. The
feature set's name is the canonical ``LAYER:POOLING``, e.g. ``("final:avg", "final:max",
"conv_pw_11_relu:avg")``.

The fingerprint records ``views`` (only when not "one") and ``feature_sets`` (only when layers are
given: ``[{name, layer, pooling, start, stop}]``), so stores of other settings are never mixed and
existing stores keep their fingerprint. A store without ``feature_sets`` has one implicit set,
``final``. :func:`feature_columns` turns a set name (or ``all``, their concatenation) into columns.

>>> parse_layers("final,conv_pw_11_relu:max")
[('final', 'avg'), ('conv_pw_11_relu', 'max')]
>>> fp = {"feature_dim": 384, "feature_sets": fingerprint_sets([("final", "avg"), ("conv_pw_11_relu", "max")],
...                                                          [256, 128])}
>>> feature_columns(fp, "conv_pw_11_relu:max"), feature_columns(fp, "all")
(('conv_pw_11_relu:max', slice(256, 384, None)), ('all', slice(0, 384, None)))
>>> feature_sets({"feature_dim": 256})
{'final': slice(0, 256, None)}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

VIEWS = ("one", "flip", "flip+crops")
#: How many images each view setting runs through the network per input image.
VIEW_COUNTS = {"one": 1, "flip": 2, "flip+crops": 4}
#: Side of the central crop of "flip+crops", as a fraction of the input size.
CROP_FRACTION = 7 / 8
FINAL = "final"  # the layer featx takes by default (the last block)
ALL = "all"  # every feature set, side by side (the whole row)


def check_views(views: str) -> str:
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    return views


def parse_layers(layers: str | Sequence[str] | None, pooling: str = "avg") -> list[tuple[str, str]] | None:
    """``[(layer, pooling)]`` from ``"a,b:max"`` or ``["a", "b:max"]`` (None stays None); duplicates refused."""
    from featx.backbones import POOLINGS

    if layers is None:
        return None
    entries = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else [str(s).strip() for s in layers]
    if not entries or any(not e for e in entries):
        raise ValueError(f"layers must be non-empty names LAYER or LAYER:POOLING, got {layers!r}")
    parsed = []
    for entry in entries:
        name, _, pool = entry.partition(":")
        pool = pool or pooling
        if pool not in POOLINGS:
            raise ValueError(f"layer {entry!r}: pooling must be one of {POOLINGS}, got {pool!r}")
        parsed.append((name, pool))
    names = [f"{n}:{p}" for n, p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a feature set twice: {names}")
    return parsed


def canonical_layers(layers: str | Sequence[str] | None, pooling: str = "avg") -> tuple[str, ...] | None:
    """The ``LAYER:POOLING`` names of `layers` (what configs, caches and fingerprints hold)."""
    parsed = parse_layers(layers, pooling)
    return None if parsed is None else tuple(f"{n}:{p}" for n, p in parsed)


def feature_sets(fingerprint: dict) -> dict[str, slice]:
    """Feature set name → its columns in a row of a store (or a backbone) with this fingerprint."""
    sets = fingerprint.get("feature_sets")
    if not sets:
        return {FINAL: slice(0, int(fingerprint["feature_dim"]))}
    return {s["name"]: slice(int(s["start"]), int(s["stop"])) for s in sets}


def feature_columns(fingerprint: dict, features: str | None) -> tuple[str, slice]:
    """``(name, columns)`` of `features` (a set name, ``all`` or None = ``all``) for this fingerprint."""
    sets = feature_sets(fingerprint)
    if features in (None, ALL):
        return ALL, slice(0, int(fingerprint["feature_dim"]))
    if features not in sets:
        raise ValueError(f"no feature set {features!r}; this store has: {', '.join([*sets, ALL])}")
    return features, sets[features]


# -- the Keras side: views in, averaged features out -------------------------------------------------------------
def make_views(x, views: str, size: tuple[int, int]):
    """(N, H, W, C) → (V·N, H, W, C): the views of each image stacked view-major (keras.ops only)."""
    import keras

    ops = keras.ops
    if views == "one":
        return x
    stack = [x]
    if views == "flip+crops":
        h, w = size
        ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = x[:, top:top + ch, left:left + cw, :]
        stack.append(ops.image.resize(crop, size, interpolation="bilinear", antialias=False))
    stack += [ops.flip(v, axis=2) for v in list(stack)]
    return ops.concatenate(stack, axis=0)


def average_views(features, views: str):
    """(V·N, D) → (N, D): the mean over each image's views (the inverse of make_views' stacking)."""
    import keras

    n_views = VIEW_COUNTS[views]
    if n_views == 1:
        return features
    ops = keras.ops
    return ops.mean(ops.reshape(features, (n_views, -1, features.shape[-1])), axis=0)


def fingerprint_sets(parsed: list[tuple[str, str]], dims: list[int]) -> list[dict]:
    """The fingerprint's ``feature_sets`` entry: name, layer, pooling and column range of each set."""
    bounds = np.cumsum([0, *dims])
    return [{"name": f"{layer}:{pool}", "layer": layer, "pooling": pool, "start": int(bounds[i]),
             "stop": int(bounds[i + 1])} for i, (layer, pool) in enumerate(parsed)]
