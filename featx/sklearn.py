"""featx inside scikit-learn: a transformer from image paths (or uint8 images) to CNN features.

``FeatureExtractor`` follows the estimator contract: ``__init__`` only stores parameters, ``fit``
validates them cheaply, the Keras model is built lazily on first ``transform`` and never pickled
(so ``clone``, ``pickle``, ``joblib`` and ``GridSearchCV(n_jobs=...)`` work). With ``cache=PATH``
features are kept in a featx store keyed by content hash and backbone fingerprint, so grid-search
folds and repeated fits never run the CNN twice on the same image — also across processes, which
take turns on the store's writer lock and re-check what is missing once they hold it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featx.backbones import (DEFAULT_BACKBONE, POOLINGS, Backbone, fingerprint_id, get_spec, resolve_weights,
                             shared_backbone)
from featx.featuresets import canonical_layers, check_views
from featx.oom import auto_batch_size, check_batch_size
from featx.precision import check_precision
from featx.store import FEATURE_DTYPES

ON_ERROR = ("raise", "nan")


class FeatureExtractionError(ValueError):
    """Some images could not be read; `.skipped` lists each with its reason."""

    def __init__(self, skipped: list[dict]):
        self.skipped = skipped
        lines = [f"  {s['path']}: {s['kind']}: {s['reason']}" for s in skipped[:50]]
        more = f"\n  … and {len(skipped) - 50} more" if len(skipped) > 50 else ""
        super().__init__(
            f"{len(skipped)} image(s) could not be used (pass on_error='nan' to get NaN rows instead):\n"
            + "\n".join(lines) + more
        )


def _as_paths(X: Any) -> tuple[list[str] | None, np.ndarray | None, list[str] | None]:
    """(paths, images, feature_names) from what a user may pass to transform."""
    columns = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame
        if X.shape[1] != 1:
            raise ValueError(f"a DataFrame input must have exactly one column of image paths, got {X.shape[1]}")
        columns = [str(X.columns[0])]
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # a pandas Series
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype.kind in "uif" and X.ndim in (3, 4):
        return None, X, columns
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X must be a sequence of image paths (got a single path; wrap it in a list)")
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            "X must be image paths (list, 1-D array, Series or one-column DataFrame) or a uint8 image "
            f"array of shape (N, H, W, 3); got an array of shape {arr.shape}"
        )
    paths = []
    for value in arr.tolist():
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"X must contain image paths; found {type(value).__name__} {value!r}")
        paths.append(os.fspath(value))
    return paths, None, columns


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Pretrained-CNN features of images, as a scikit-learn transformer.

    Parameters
    ----------
    backbone : str, default="efficientnetb0"
        A featx registry name (``featx backbones``), e.g. ``"mobilenet_0.25"`` (vendored weights).
    weights : {"imagenet", "none"} or path, default="imagenet"
        ``"imagenet"``: from the Keras cache, else downloaded into it by ``fit`` (verified; see
        ``weights_mirror`` and ``offline``); ``"none"`` (random weights) must be asked for explicitly.
    image_size : int, optional
        Square input size; the backbone's default when None.
    pooling : {"avg", "max"}, default="avg"
    layer : str, optional
        Take features from this named layer instead of the last conv block.
    views : {"one", "flip", "flip+crops"}, default="one"
        Views of each image whose features are averaged into its row (made inside the model, on the
        device; see ``featx.featuresets``).
    layers : sequence of str, optional
        Several feature sets from one pass, side by side: ``"LAYER"`` or ``"LAYER:POOLING"``
        (``final`` = the last block), e.g. ``("final:avg", "final:max")``. Excludes ``layer``.
    batch_size : int or "auto", default=32
        Images per model call; "auto" picks it from the free memory (see ``featx.oom.auto_batch_size``).
    dtype : {"float32", "float16"}, default="float32"
        dtype of the cache's features (the output is float32 either way).
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        What the model computes in (``featx.precision``); 16-bit features differ from float32's by
        round-off, so a non-float32 precision is part of the fingerprint (and of a cache's key).
    cache : path, optional
        Content-addressed feature cache. A path ending in ``.h5`` is one featx store (for one backbone
        configuration); any other path is a folder holding one store per configuration, named
        ``<backbone>-<fingerprint id>.h5`` — use that when a grid search varies the backbone.
    on_error : {"raise", "nan"}, default="raise"
        "raise": one error listing every unusable image; "nan": NaN rows for them (see ``skipped_``).
    workers : int, optional
        Decoding threads (default: all cores).
    weights_mirror : str, optional
        Base address serving Keras' weight file names, used instead of Keras' own address for a
        download (default: the FEATX_WEIGHTS_MIRROR environment variable).
    offline : bool, optional
        True: never download; ImageNet weights missing from the Keras cache are an error (default:
        the FEATX_OFFLINE environment variable).

    Examples
    --------
    >>> from featx.sklearn import FeatureExtractor
    >>> fx = FeatureExtractor(backbone="mobilenet_0.25", image_size=96).fit()
    >>> fx.get_feature_names_out()[:2].tolist()
    ['mobilenet_0.25_0000', 'mobilenet_0.25_0001']
    >>> import numpy as np
    >>> fx.transform(np.zeros((2, 64, 64, 3), np.uint8)).shape
    (2, 256)
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | os.PathLike | None = "imagenet",
        image_size: int | None = None,
        pooling: str = "avg",
        layer: str | None = None,
        batch_size: int = 32,
        dtype: str = "float32",
        precision: str = "float32",
        cache: str | os.PathLike | None = None,
        on_error: str = "raise",
        workers: int | None = None,
        weights_mirror: str | None = None,
        offline: bool | None = None,
        views: str = "one",
        layers: tuple[str, ...] | None = None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.pooling = pooling
        self.layer = layer
        self.batch_size = batch_size
        self.dtype = dtype
        self.precision = precision
        self.cache = cache
        self.on_error = on_error
        self.workers = workers
        self.weights_mirror = weights_mirror
        self.offline = offline
        self.views = views
        self.layers = layers

    # -- sklearn contract ---------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # image paths or (N, H, W, 3) images, not a feature matrix
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    def __getstate__(self) -> dict:
        # never pickle a Keras model: it is rebuilt (once per process) on first use; nor a batch size
        # chosen from this machine's free memory
        return {k: v for k, v in self.__dict__.items() if k not in ("_backbone", "_auto_batch_size")}

    def fit(self, X: Any = None, y: Any = None) -> "FeatureExtractor":
        """Validate the parameters and make sure the weights are at hand: ImageNet weights missing
        from the Keras cache are downloaded now (no model is built unless `layer` needs it)."""
        spec = get_spec(self.backbone)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, got {self.dtype!r}")
        check_precision(self.precision)
        check_views(self.views)
        if canonical_layers(self.layers, self.pooling) is not None and self.layer is not None:
            raise ValueError("give layer (one inner layer) or layers (several feature sets), not both")
        check_batch_size(self.batch_size)
        # fails now if the weights cannot be had (offline, or a failed download), not in transform
        resolve_weights(spec, self.weights, weights_mirror=self.weights_mirror, offline=self.offline)
        if X is not None:
            _, _, columns = _as_paths(X)
            self.n_features_in_ = 1
            if columns is not None:
                self.feature_names_in_ = np.array(columns, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        simple = self.layer is None and self.layers is None
        self.n_features_out_ = spec.feature_dim if simple else self._get_backbone().feature_dim
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return np.array([f"{self.backbone}_{i:04d}" for i in range(self.n_features_out_)], dtype=object)

    @property
    def fingerprint_(self) -> dict:
        """The backbone fingerprint (builds the model on first access)."""
        check_is_fitted(self, "n_features_out_")
        return self._get_backbone().fingerprint

    # -- work -----------------------------------------------------------------------------------
    def _get_backbone(self) -> Backbone:
        bb = self.__dict__.get("_backbone")
        if bb is None:
            # one model per configuration and process, shared with every other extractor (featx.backbones)
            bb = self._backbone = shared_backbone(
                self.backbone, weights=self.weights, image_size=self.image_size, pooling=self.pooling,
                layer=self.layer, precision=self.precision, weights_mirror=self.weights_mirror, offline=self.offline,
                views=self.views, layers=self.layers)
        return bb

    def _batch_size(self, bb: Backbone) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        size = self.__dict__.get("_auto_batch_size")
        if size is None:
            from featx.runtime import resolve_device

            size = self._auto_batch_size = auto_batch_size(bb.inference_model, resolve_device("auto"))[0]
        return size

    def transform(self, X: Any) -> np.ndarray:
        """Features (N, D) float32, rows in input order."""
        check_is_fitted(self, "n_features_out_")
        paths, images, columns = _as_paths(X)
        if columns is not None and hasattr(self, "feature_names_in_") and list(self.feature_names_in_) != columns:
            raise ValueError(f"column {columns[0]!r} differs from the one seen in fit ({self.feature_names_in_[0]!r})")
        bb = self._get_backbone()
        if images is not None:
            self.skipped_ = []
            return self._transform_images(bb, images)
        if not paths:
            return np.zeros((0, bb.feature_dim), np.float32)
        if self.cache is not None:
            features, skipped = self._transform_cached(bb, paths)
        else:
            from featx.extract import extract_features

            out = extract_features(paths, bb, batch_size=self._batch_size(bb), workers=self.workers)
            features, skipped = out.features, out.skipped
        self.skipped_ = skipped
        if skipped and self.on_error == "raise":
            raise FeatureExtractionError(skipped)
        return features

    def _transform_images(self, bb: Backbone, images: np.ndarray) -> np.ndarray:
        from featx.decode import decode_array
        from featx.oom import BackoffPredictor

        pixels = decode_array(images, bb.image_size)
        batch_size = self._batch_size(bb)
        predict = BackoffPredictor(bb.predict, batch_size)  # halves the batch on out-of-memory, says so
        out = np.empty((len(pixels), bb.feature_dim), np.float32)
        batch = np.zeros((batch_size, *bb.image_size, 3), np.uint8)
        for start in range(0, len(pixels), batch_size):
            block = pixels[start:start + batch_size]
            batch[:len(block)] = block
            batch[len(block):] = 0  # fixed batch shape: a compiled model never retraces
            out[start:start + len(block)] = predict(batch)[:len(block)]
        return out

    def cache_path(self) -> str | None:
        """The store this extractor reads and writes (None without a cache)."""
        if self.cache is None:
            return None
        cache = os.fspath(self.cache)
        if cache.endswith(".h5"):
            return cache
        bb = self._get_backbone()
        return os.path.join(cache, f"{bb.spec.name}-{fingerprint_id(bb.fingerprint)}.h5")

    def _transform_cached(self, bb: Backbone, paths: list[str]) -> tuple[np.ndarray, list[dict]]:
        from featx.decode import read_bytes, sha256_bytes
        from featx.extract import extract
        from featx.sources import ImageSet, Item, display_path
        from featx.store import FeatureStore, FingerprintMismatch

        def digest(path: str) -> str:
            try:
                return sha256_bytes(read_bytes(path)[0])
            except (OSError, ValueError):
                return ""  # unusable now: the extraction below records why

        store_path = self.cache_path()
        with ThreadPoolExecutor(self.workers or os.cpu_count() or 1) as pool:
            hashes = list(pool.map(digest, paths))
        if os.path.exists(store_path):
            with FeatureStore(store_path) as fs:
                if fs.fingerprint_id != fingerprint_id(bb.fingerprint):
                    raise FingerprintMismatch(
                        f"cache {store_path} holds features of another backbone configuration "
                        f"({fs.fingerprint['backbone']}, fingerprint {fs.fingerprint_id}); use another cache"
                    )
                known = set(fs.sha256.tolist())
                if all(h in known for h in hashes):  # all cached: one store read, no lock
                    return _gather(fs, bb, paths, hashes, {})
        else:
            known = set()
        # One process at a time extracts into the cache (the lock is waited for); `extract` re-reads the
        # store under the lock and reuses what another process added meanwhile, so no image goes through
        # the CNN twice even when grid-search folds run in parallel.
        todo = sorted({os.path.abspath(p) for p, h in zip(paths, hashes) if h not in known})
        summary = extract(ImageSet([Item(p, display_path(p), None, None) for p in todo], None, "paths", []), store_path,
                          backbone=bb, dtype=self.dtype, batch_size=self._batch_size(bb), workers=self.workers,
                          progress=False, assign_split=False, lock_timeout=None)
        with FeatureStore(store_path) as fs:
            return _gather(fs, bb, paths, hashes, {s["path"]: s for s in summary.skipped})


def _gather(fs, bb: Backbone, paths: list[str], hashes: list[str],
            skipped_by_path: dict[str, dict]) -> tuple[np.ndarray, list[dict]]:
    """Rows of `paths` from an open store, by content hash; NaN rows and skip records for the rest."""
    from featx.sources import display_path

    features = np.full((len(paths), bb.feature_dim), np.nan, np.float32)
    skipped: list[dict] = []
    by_hash = {h: j for j, h in enumerate(fs.sha256.tolist())}
    by_path = None
    rows: list[int | None] = []
    for i, (path, h) in enumerate(zip(paths, hashes)):
        absolute = display_path(os.path.abspath(path))  # how the store spells it (valid UTF-8)
        row = by_hash.get(h) if h else None
        if row is None and absolute not in skipped_by_path:
            by_path = by_path or {p: j for j, p in enumerate(fs.paths.tolist())}
            row = by_path.get(absolute)  # the file changed between hashing and extraction
        if row is None:
            s = skipped_by_path.get(absolute, {"kind": "unreadable", "reason": "could not be read"})
            skipped.append({"index": i, "path": path, "kind": s["kind"], "reason": s["reason"]})
        rows.append(row)
    ok = [i for i, r in enumerate(rows) if r is not None]
    if ok:
        features[ok] = fs.features(np.array([rows[i] for i in ok], np.int64))
    return features, skipped
