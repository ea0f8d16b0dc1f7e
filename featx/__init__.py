"""featx — transfer learning on images, done properly.

A frozen pretrained CNN runs once over an image set and its features are cached in HDF5
(`featx.extract.extract`, `featx.FeatureStore`); linear classifiers train on the cache in seconds
(`featx.classify`, `featx.linear`); `featx.FeatureExtractor` does the same inside scikit-learn.
Heavy dependencies (Keras, TensorFlow) are imported only when used.
"""

from featx.runtime import prefer_fast_cpu_kernels

__version__ = "0.1.0"
__all__ = ["FeatureExtractor", "FeatureStore", "__version__"]


def __getattr__(name: str):
    # lazy, so `import featx` stays cheap and never imports Keras by itself
    if name == "FeatureExtractor":
        from featx.sklearn import FeatureExtractor

        return FeatureExtractor
    if name == "FeatureStore":
        from featx.store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


prefer_fast_cpu_kernels()  # before anything imports TensorFlow
