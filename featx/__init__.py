"""featx — transfer learning on images, done properly.

A frozen pretrained CNN runs once over an image set and its features are cached in HDF5
(`featx.extract`, `featx.FeatureStore`); linear classifiers train on the cache in seconds
(`featx.linear`). Heavy dependencies (Keras, TensorFlow) are imported only when used.
"""

__version__ = "0.1.0"
