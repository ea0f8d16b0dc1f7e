"""featx.classify.trained_model: one entry point for .skops classifiers and .keras fine-tuned models."""

import zipfile

import pytest

from featx.classify import _FinetunedModelFile, _SavedClassifierFile, trained_model
from featx.errors import InputNotFound


def test_the_kind_is_read_from_the_content_not_the_name(tmp_path):
    keras_like = tmp_path / "model.bin"
    with zipfile.ZipFile(keras_like, "w") as zf:
        zf.writestr("config.json", "{}")
    assert trained_model(keras_like, allow_unsafe=True) == _FinetunedModelFile(str(keras_like), True)
    junk = tmp_path / "model.keras"
    junk.write_bytes(b"not a zip")
    assert trained_model(junk) == _SavedClassifierFile(str(junk))


def test_nothing_is_loaded_until_used_and_errors_are_the_old_ones(tmp_path):
    model = trained_model(tmp_path / "missing.skops")  # no error yet, as the CLI did not check first either
    with pytest.raises(InputNotFound):
        model.evaluate(tmp_path / "store.h5", split="validation")
