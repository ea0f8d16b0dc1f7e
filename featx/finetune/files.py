"""The fine-tuned model file: a stock ``.keras`` file plus a ``featx.json`` entry, written atomically.

The file holds only stock Keras layers (it loads with ``keras.saving.load_model`` in safe mode, no
featx needed) plus featx's metadata: class names, the starting backbone's fingerprint, the split
rule, the training history and settings. Loading keeps Keras' safe mode on.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx import linear
from featx.fileio import atomic_output, json_default
from featx.fold import fold_batchnorm
from featx.runtime import load_backend

METADATA_ENTRY = "featx.json"  # extra entry in the .keras zip; Keras ignores entries it does not know
FORMAT_VERSION = 1


def save_model(model, out: str | os.PathLike, metadata: dict) -> None:
    """Write the .keras file with featx's metadata inside, atomically (a crash leaves the old file or none)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import keras

    with atomic_output(out, suffix=".tmp.keras") as tmp:  # Keras insists on the .keras extension
        # An uncompiled view of the same layers: the file holds no optimizer state (smaller, and
        # loading with compile=True does not warn about optimizer variables).
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(METADATA_ENTRY, json.dumps(metadata, default=json_default))


def is_keras_file(path: str | os.PathLike) -> bool:
    """True for a Keras v3 model file (a zip with config.json), whatever its name."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "config.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


@dataclass
class FinetunedModel:
    """A loaded fine-tuned model: uint8 pixels in, class probabilities out, with featx's metadata."""

    model: Any
    label_names: list[str]
    info: dict
    path: str
    _inference_model: Any = field(default=None, repr=False, compare=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.input_shape[1:3])  # type: ignore[return-value]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        if self._inference_model is None:
            # BatchNormalization folded into the convolutions: same output, faster (featx.fold)
            self._inference_model = fold_batchnorm(self.model)[0]
        return np.asarray(self._inference_model.predict_on_batch(pixels), np.float32)


def _read_metadata(path: str) -> dict:
    """featx's entry of a .keras file; ModelFileError for any other file."""
    if not is_keras_file(path):
        raise linear.ModelFileError(f"{path} is not a Keras .keras model file")
    with zipfile.ZipFile(path) as zf:
        if METADATA_ENTRY not in zf.namelist():
            raise linear.ModelFileError(
                f"{path} is a Keras model but not one saved by `featx finetune` (no {METADATA_ENTRY} with its "
                "class names and backbone); load it with keras.saving.load_model")
        info = json.loads(zf.read(METADATA_ENTRY))
    if info.get("featx_model") != "finetuned" or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise linear.ModelFileError(f"{path}: unsupported featx model format {info.get('format_version')}")
    return info


def load_model(path: str | os.PathLike, *, allow_unsafe: bool = False) -> FinetunedModel:
    """Load a featx fine-tuned model with Keras' safe mode on.

    A model holding a Lambda layer (arbitrary Python code) is refused unless ``allow_unsafe=True``:
    loading it would run that code.
    """
    load_backend()
    import keras

    path = os.fspath(path)
    info = _read_metadata(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe)
    except ValueError as exc:
        if "unsafe" in str(exc).lower() or "lambda" in str(exc).lower():
            raise linear.UnsafeModelError(
                f"refused to load {path}: it contains a Lambda layer, i.e. Python code that loading would run. "
                "Load it only if you trust where it came from, with --allow-unsafe-model "
                "(allow_unsafe=True)") from exc
        raise
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or model.inputs[0].dtype != "uint8":
        raise linear.ModelFileError(f"{path}: expected a uint8 (N, H, W, 3) image input, got {shape} "
                                    f"{model.inputs[0].dtype}")
    return FinetunedModel(model, list(info["label_names"]), info, path)
