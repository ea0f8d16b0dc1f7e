"""FeatureExtractor as a first-class scikit-learn citizen, on real photos and the real vendored backbone."""

from __future__ import annotations

import pickle
import shutil

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import TEST_SIZE, photo_files
from featx.sklearn import FeatureExtractionError, FeatureExtractor
from featx.store import FeatureStore, FingerprintMismatch


def fx(**kw) -> FeatureExtractor:
    return FeatureExtractor(backbone="mobilenet_0.25", image_size=TEST_SIZE, **kw)


@pytest.fixture(scope="module")
def photos():
    return [str(p) for cls in ("cat", "flower") for p in photo_files(cls, 6)]


# -- sklearn's own estimator checks ------------------------------------------------------------------
class _CheckedFeatureExtractor(FeatureExtractor):
    """FeatureExtractor with its input tags widened to 2-D arrays: with the honest tags (paths, 1-D)
    sklearn skips every check, so this runs them all and lists below the ones that cannot apply."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array, tags.input_tags.one_d_array, tags.input_tags.string = True, False, False
        return tags


_NUMERIC = "feeds a numeric feature matrix; FeatureExtractor takes image paths or (N, H, W, 3) images"
NOT_APPLICABLE_TO_PATHS = {
    # each of these fits/transforms random numeric (n_samples, n_features) arrays, which are not images;
    # the same property is tested below with real image paths where it matters
    "check_fit_score_takes_y": _NUMERIC,
    "check_estimators_overwrite_params": _NUMERIC,
    "check_dont_overwrite_parameters": _NUMERIC,
    "check_estimators_fit_returns_self": _NUMERIC + " (see test_fit_is_cheap_and_returns_self)",
    "check_readonly_memmap_input": _NUMERIC,
    "check_n_features_in_after_fitting": _NUMERIC,
    "check_positive_only_tag_during_fit": _NUMERIC,
    "check_estimators_dtypes": _NUMERIC,
    "check_complex_data": _NUMERIC + " (complex values are rejected as non-paths)",
    "check_dtype_object": _NUMERIC,
    "check_estimators_empty_data_messages": _NUMERIC + " (an empty path list gives an empty result)",
    "check_pipeline_consistency": _NUMERIC + " (see test_pipeline_grid_search_runs_cnn_once_per_image)",
    "check_estimators_nan_inf": _NUMERIC + " (paths cannot be NaN; NaN images are rejected as non-uint8)",
    "check_estimator_sparse_tag": "sparse feature matrices are not images",
    "check_estimator_sparse_array": "sparse feature matrices are not images",
    "check_estimator_sparse_matrix": "sparse feature matrices are not images",
    "check_estimators_pickle": _NUMERIC + " (see test_clone_pickle_joblib)",
    "check_f_contiguous_array_estimator": _NUMERIC,
    "check_transformer_data_not_an_array": _NUMERIC + " (see test_accepts_lists_arrays_series_dataframes)",
    "check_transformer_general": _NUMERIC + " (see test_rows_follow_input_order_and_subsets)",
    "check_methods_sample_order_invariance": _NUMERIC + " (see test_rows_follow_input_order_and_subsets)",
    "check_methods_subset_invariance": _NUMERIC + " (see test_rows_follow_input_order_and_subsets)",
    "check_fit2d_1sample": _NUMERIC,
    "check_fit2d_1feature": _NUMERIC,
    "check_dict_unchanged": _NUMERIC,
    "check_fit_idempotent": _NUMERIC,
    "check_fit_check_is_fitted": _NUMERIC,
    "check_n_features_in": _NUMERIC + " (n_features_in_ is 1: one column of paths)",
    "check_fit2d_predict1d": _NUMERIC,
}


@parametrize_with_checks(
    [_CheckedFeatureExtractor(backbone="mobilenet_0.25", image_size=32)],
    expected_failed_checks=lambda est: NOT_APPLICABLE_TO_PATHS,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- the contract on real images -------------------------------------------------------------------------
def test_fit_is_cheap_and_returns_self(photos):
    est = fx()
    assert est.fit(photos) is est
    assert "_backbone" not in est.__dict__  # the model is built lazily, on first transform
    assert est.n_features_in_ == 1 and est.n_features_out_ == 256
    assert est.get_feature_names_out()[0] == "mobilenet_0.25_0000"
    with pytest.raises(ValueError, match="on_error"):
        fx(on_error="ignore").fit()
    with pytest.raises(ValueError, match="unknown backbone"):
        FeatureExtractor(backbone="nope").fit()
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        fx(batch_size=0).fit()


def test_auto_batch_size_gives_the_same_features_and_is_not_pickled(photos):
    ref = fx().fit().transform(photos)
    est = fx(batch_size="auto").fit()
    np.testing.assert_allclose(est.transform(photos), ref, rtol=1e-5, atol=1e-6)
    assert est._auto_batch_size == 64  # this machine's CPU cap, chosen from its free memory
    copy = pickle.loads(pickle.dumps(est))
    assert "_auto_batch_size" not in copy.__dict__ and copy.get_params()["batch_size"] == "auto"


def test_rows_follow_input_order_and_subsets(photos):
    est = fx().fit()
    full = est.transform(photos)
    assert full.shape == (12, 256) and full.dtype == np.float32 and np.isfinite(full).all()
    np.testing.assert_allclose(est.transform(photos[::-1]), full[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.transform(photos[3:7]), full[3:7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.fit_transform(photos), full, rtol=1e-5, atol=1e-6)


def test_accepts_lists_arrays_series_dataframes(photos):
    est = fx().fit()
    ref = est.transform(photos[:3])
    for X in (np.array(photos[:3]), np.array(photos[:3]).reshape(-1, 1), pd.Series(photos[:3]),
              tuple(photos[:3])):
        np.testing.assert_allclose(est.transform(X), ref, rtol=1e-5, atol=1e-6)
    df = pd.DataFrame({"image": photos[:3]})
    est_df = fx().fit(df)
    assert est_df.feature_names_in_.tolist() == ["image"]
    np.testing.assert_allclose(est_df.transform(df), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one column"):
        est.transform(pd.DataFrame({"a": photos[:2], "b": photos[:2]}))
    with pytest.raises(ValueError, match="image paths"):
        est.transform([1.5, 2.5])
    assert est.transform([]).shape == (0, 256)


def test_image_arrays_equal_paths_for_lossless_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB").resize((80, 60))) for p in photo_files("coffee", 3)])
    paths = []
    for i, a in enumerate(arrays):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    est = fx().fit()
    np.testing.assert_allclose(est.transform(arrays), est.transform(paths), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        est.transform(rng.random((2, 32, 32, 3)).astype(np.float32))


def test_bad_images_raise_one_error_or_give_nan_rows(photos, tmp_path):
    bad1, bad2 = tmp_path / "empty.jpg", tmp_path / "page.png"
    bad1.write_bytes(b"")
    bad2.write_text("<!DOCTYPE html><title>404 Not Found</title>")
    X = [photos[0], str(bad1), photos[1], str(bad2)]
    with pytest.raises(FeatureExtractionError) as err:
        fx().fit().transform(X)
    assert len(err.value.skipped) == 2 and "empty.jpg" in str(err.value) and "page.png" in str(err.value)
    est = fx(on_error="nan").fit()
    out = est.transform(X)
    assert out.shape == (4, 256)
    assert np.isnan(out[[1, 3]]).all() and np.isfinite(out[[0, 2]]).all()
    assert [s["index"] for s in est.skipped_] == [1, 3]
    assert [s["kind"] for s in est.skipped_] == ["empty", "not_an_image"]


def test_clone_pickle_joblib(photos, tmp_path):
    est = fx().fit()
    ref = est.transform(photos[:4])
    assert "_backbone" in est.__dict__
    for copy in (pickle.loads(pickle.dumps(est)), joblib.load(joblib.dump(est, tmp_path / "fx.joblib")[0])):
        assert "_backbone" not in copy.__dict__  # never pickled
        np.testing.assert_allclose(copy.transform(photos[:4]), ref, rtol=1e-5, atol=1e-6)
    assert clone(est).get_params() == est.get_params()


def test_cache_runs_the_cnn_once_per_image(photos, tmp_path):
    cache = tmp_path / "cache.h5"
    est = fx(cache=str(cache)).fit()
    first = est.transform(photos)
    with FeatureStore(cache) as fs:
        assert len(fs) == 12 and fs.cnn_rows_total == 12
    second = fx(cache=str(cache)).fit().transform(photos[::-1])  # another instance, another order
    np.testing.assert_array_equal(second, first[::-1])
    # same content under a new name: read from the cache by content hash
    copy = tmp_path / "renamed.jpg"
    shutil.copy(photos[0], copy)
    np.testing.assert_array_equal(est.transform([str(copy)])[0], first[0])
    with FeatureStore(cache) as fs:
        assert fs.cnn_rows_total == 12
    with pytest.raises(FingerprintMismatch, match="another backbone configuration"):
        fx(cache=str(cache), pooling="max").fit().transform(photos[:1])


# n_jobs=1 runs in this process (the session's backbone): the pipeline and cache contract, in seconds;
# n_jobs=2 adds two worker processes that each import Keras and build the model (~1 min): the large tier.
@pytest.mark.parametrize("n_jobs", [1, pytest.param(2, marks=pytest.mark.large)])
def test_pipeline_grid_search_runs_cnn_once_per_image(tmp_path, n_jobs):
    files = [str(p) for p in photo_files("cat", 20)] + [str(p) for p in photo_files("flower", 20)]
    y = np.array([0] * 20 + [1] * 20)
    cache = tmp_path / "gs.h5"
    pipe = make_pipeline(fx(cache=str(cache)), LogisticRegression(max_iter=2000))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=3, n_jobs=n_jobs)
    search.fit(files, y)
    assert search.best_score_ > 0.7  # cat vs flower, 27 training photos per fold at 96 px (chance 0.5)
    with FeatureStore(cache) as fs:
        assert len(fs) == 40
        assert fs.cnn_rows_total == 40  # every fold, both workers and the refit: each image once
    scores = cross_val_score(search.best_estimator_, files, y, cv=2)
    assert scores.mean() > 0.7
    with FeatureStore(cache) as fs:
        assert fs.cnn_rows_total == 40
    fitted = search.best_estimator_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fitted)).predict(files), fitted.predict(files))
    assert clone(fitted).get_params()["logisticregression__C"] == fitted.get_params()["logisticregression__C"]
    fitted.set_output(transform="pandas")
    frame = fitted[0].transform(files[:2])
    assert isinstance(frame, pd.DataFrame) and frame.shape == (2, 256)
    assert frame.columns[0] == "mobilenet_0.25_0000"


def test_cache_folder_holds_one_store_per_configuration(photos, tmp_path):
    cache = tmp_path / "feature_cache"
    avg = fx(cache=str(cache)).fit()
    mx = fx(cache=str(cache), pooling="max").fit()
    a, m = avg.transform(photos[:4]), mx.transform(photos[:4])
    assert not np.allclose(a, m)
    stores = sorted(p.name for p in cache.glob("*.h5"))
    assert len(stores) == 2 and all(s.startswith("mobilenet_0.25-") for s in stores)
    assert avg.cache_path() != mx.cache_path()
    np.testing.assert_array_equal(fx(cache=str(cache)).fit().transform(photos[:4]), a)


def test_file_names_that_are_not_utf8_work_with_and_without_cache(photos, tmp_path):
    """Linux file names are bytes; a Latin-1 name must not crash the store (h5py wants UTF-8)."""
    import os

    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    shutil.copy(photos[0], odd)
    broken = os.path.join(os.fsencode(tmp_path), b"br\xfbl\xe9.jpg")
    with open(broken, "wb") as f:
        f.write(b"")
    X = [os.fsdecode(odd), os.fsdecode(broken)]
    ref = fx().fit().transform(photos[:1])[0]
    for est in (fx(on_error="nan"), fx(on_error="nan", cache=str(tmp_path / "cache.h5"))):
        out = est.fit().transform(X)
        np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)
        assert np.isnan(out[1]).all() and [s["kind"] for s in est.skipped_] == ["empty"]


def test_extractors_and_dask_workers_share_one_backbone_per_configuration():
    from featx.distributed import worker_backbone

    bb = fx()._get_backbone()
    assert FeatureExtractor(backbone="MobileNet_0.25", image_size=TEST_SIZE)._get_backbone() is bb  # canonical name
    # how missing weights would be fetched (mirror, offline) does not pick another model
    assert worker_backbone("mobilenet_0.25", "imagenet", TEST_SIZE, "avg", None, offline=True) is bb
    assert fx(pooling="max")._get_backbone() is not bb
