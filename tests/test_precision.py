"""--precision: the inference model computing in bfloat16/float16, on real photos and real weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_SIZE, photo_files
from featx.backbones import Backbone, fingerprint_id
from featx.decode import decode_file
from featx.extract import extract
from featx.store import FeatureStore, FingerprintMismatch


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    files = [f for cls in ("cat", "china", "coffee", "flower", "rocket") for f in photo_files(cls, 8)]
    return np.stack([decode_file(f, (TEST_SIZE, TEST_SIZE)).pixels for f in files])


@pytest.fixture(scope="module")
def bf16_backbone():
    return Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, precision="bfloat16")


def test_float32_fingerprint_unchanged(backbone):
    # every existing store is float32: its fingerprint (and id) must not gain a field
    assert "precision" not in backbone.fingerprint and backbone.precision == "float32"
    bb = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, precision="float32")
    assert fingerprint_id(bb.fingerprint) == fingerprint_id(backbone.fingerprint)


@pytest.mark.parametrize("precision, min_cos, median_cos", [
    # Measured on these 40 photos at 96 px (TensorFlow, CPU): bfloat16 min 0.921, median 0.990;
    # float16 min 0.9996, median 0.9999. bfloat16 keeps 8 significant bits, so every layer's output is rounded by up
    # to 2^-9; through MobileNet-0.25's 27 thin convolutions the error grows from 0.4% (conv1) to
    # ~30% relative at the last pointwise conv (measured layer by layer), hence the lower bound.
    ("bfloat16", 0.88, 0.98),
    ("float16", 0.995, 0.999),
])
def test_reduced_precision_features_agree_with_float32(precision, min_cos, median_cos, backbone, bf16_backbone,
                                                       photos):
    bb = bf16_backbone if precision == "bfloat16" else Backbone.build("mobilenet_0.25", image_size=TEST_SIZE,
                                                                       precision=precision)
    assert bb.fingerprint["precision"] == precision
    assert {type(l).__name__ for l in bb.inference_model.layers}  # built
    policies = {l.dtype_policy.name for l in bb.inference_model.layers[-2].layers if l.weights}
    assert policies == {f"mixed_{precision}"}  # every weighted layer of the backbone computes in 16 bits
    ours, ref = bb.predict(photos), backbone.predict(photos)
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    cos = cosines(ours, ref)
    assert cos.min() >= min_cos and np.median(cos) >= median_cos, (cos.min(), np.median(cos))
    assert not np.array_equal(ours, ref)  # it really computed in 16 bits
    print(f"{precision} vs float32: cosine min {cos.min():.4f} median {np.median(cos):.5f}")


def test_store_refuses_mixing_precisions(tmp_path, backbone, bf16_backbone):
    from conftest import make_photo_set

    data = make_photo_set(tmp_path / "f", n=3)
    store = tmp_path / "s.h5"
    summary = extract(data, store, backbone=bf16_backbone, batch_size=4, progress=False)
    assert summary.precision == "bfloat16" and "precision bfloat16" in summary.format()
    with FeatureStore(store) as fs:
        assert fs.fingerprint["precision"] == "bfloat16"
    with pytest.raises(FingerprintMismatch, match="precision"):
        extract(data, store, backbone=backbone, batch_size=4, progress=False)
    # a request that contradicts the built backbone is refused, not ignored
    with pytest.raises(ValueError, match="computes in float32"):
        extract(data, tmp_path / "t.h5", backbone=backbone, precision="bfloat16", progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        extract(data, tmp_path / "t.h5", backbone="mobilenet_0.25", precision="half", progress=False)


def test_feature_extractor_precision_param(backbone):
    from sklearn.base import clone

    from featx.sklearn import FeatureExtractor

    fx = FeatureExtractor(backbone="mobilenet_0.25", image_size=TEST_SIZE, precision="bfloat16")
    assert clone(fx).get_params()["precision"] == "bfloat16"
    assert fx.fit().fingerprint_["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        FeatureExtractor(backbone="mobilenet_0.25", precision="int8").fit()


def test_classifier_of_a_bfloat16_store_predicts_in_bfloat16(backbone):
    from featx.classify import backbone_for

    bb = backbone_for({**backbone.fingerprint, "precision": "bfloat16"})
    assert bb.precision == "bfloat16" and bb.fingerprint["precision"] == "bfloat16"
