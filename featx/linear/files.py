"""The classifier file: a fitted pipeline and its metadata in one ``.skops`` file, loaded safely.

Classifiers are saved with :mod:`skops.io` and loaded back only after every
type named in the file has been checked against :data:`TRUSTED_TYPES`, so
opening a classifier file never runs code from it. :func:`check_fingerprint`
compares the backbone a classifier was trained on with the one at hand.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from featx.errors import FingerprintMismatch, InputNotFound
from featx.fileio import json_default, write_bytes_atomically

__all__ = [
    "FILE_FORMAT",
    "FILE_FORMAT_VERSION",
    "TRUSTED_TYPES",
    "ModelFileError",
    "UnsafeModelError",
    "FingerprintMismatch",
    "SavedClassifier",
    "save_classifier",
    "load_classifier",
    "check_fingerprint",
]

class ModelFileError(Exception):
    """The file is not a readable featx classifier."""


class UnsafeModelError(ModelFileError):
    """The file names types outside :data:`TRUSTED_TYPES`; it was not loaded."""

    def __init__(self, message: str, untrusted: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.untrusted = list(untrusted)


FILE_FORMAT = "featx-classifier"
FILE_FORMAT_VERSION = 1

# Every type featx writes into a classifier file, and nothing else: whatever
# the schema names outside this list is refused before anything is built.
# skops itself trusts every sklearn estimator by default, which is wider than
# featx needs, so this list is checked independently of skops' own audit.
TRUSTED_TYPES: tuple[str, ...] = (
    # containers of the payload and of sklearn's params/attributes; skops
    # stores every JSON primitive as a "builtins.str" node and names int, float
    # and bool only as dict key types (e.g. a class_weight dict)
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    # fitted arrays (read back with allow_pickle=False) and the numeric scalars
    # sklearn keeps as attributes (n_samples_seen_, intercept values, counts)
    "numpy.ndarray",
    "numpy.bool_",
    "numpy.float32",
    "numpy.float64",
    "numpy.int32",
    "numpy.int64",
    # the estimators featx.linear.cv.make_pipeline builds
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    # featx.linear.sgd.train_sgd's classifier and the loss object it keeps (_loss_function_),
    # one per loss train_sgd accepts; skops rebuilds the loss by calling the
    # class with its saved constructor args (Hinge(1.0), CyHalfBinomialLoss())
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._sgd_fast.Hinge",
    "sklearn._loss._loss.CyHalfBinomialLoss",
)

# A featx schema is a few kB and its arrays a few MB (2048 features x 1000
# classes of float64 is 16 MB); refuse absurd sizes before decompressing
# anything, so a zip bomb cannot exhaust memory.
_MAX_SCHEMA_BYTES = 64 * 1024 * 1024
_MAX_UNCOMPRESSED_BYTES = 2 * 1024**3


@dataclass
class SavedClassifier:
    """A loaded classifier file."""

    estimator: Pipeline
    fingerprint: dict
    label_names: list[str]
    info: dict


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-able (dicts, lists, str, numbers): {exc}") from None


def _schema_type_names(schema: Any) -> set[str]:
    """Every ``module.name`` the skops schema refers to, walked iteratively."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            module, name = node.get("__module__"), node.get("__class__")
            if module is not None or name is not None:
                found.add(f"{module}.{name}")
            if node.get("__loader__") == "MethodNode":
                content = node.get("content")
                func = content.get("func") if isinstance(content, dict) else None
                found.add(f"{module}.{name}.{func}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _refuse_untrusted(names: set[str] | list[str]) -> None:
    untrusted = sorted(set(names) - set(TRUSTED_TYPES))
    if untrusted:
        raise UnsafeModelError(
            "refusing to load: the file refers to types featx never writes: "
            + ", ".join(untrusted)
            + ". It was not made by featx or has been tampered with.",
            untrusted,
        )


def _audit(data: bytes) -> None:
    """Raise unless every type named in the skops bytes is in :data:`TRUSTED_TYPES`.

    Only reads the zip and its JSON schema; nothing is imported or built.
    Two independent passes: featx's own walk of the raw schema, then skops'
    node tree (which also sees types implied by its loaders).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            try:
                info = zf.getinfo("schema.json")
            except KeyError:
                raise ModelFileError("no schema.json inside; not a skops file") from None
            if info.file_size > _MAX_SCHEMA_BYTES:
                raise ModelFileError(f"schema.json is implausibly large ({info.file_size} bytes)")
            total = sum(member.file_size for member in zf.infolist())
            if total > _MAX_UNCOMPRESSED_BYTES:
                raise ModelFileError(f"implausibly large content ({total} bytes uncompressed)")
            schema = json.loads(zf.read(info))
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError,
            json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"corrupt skops file: {type(exc).__name__}: {exc}") from None
    # Ours first, so a hostile file is reported as unsafe even when it would
    # also trip skops' parser.
    _refuse_untrusted(_schema_type_names(schema))
    try:
        skops_untrusted = sio.get_untrusted_types(data=data)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        # skops raises these on schemas it cannot make sense of.
        raise ModelFileError(f"unreadable skops schema: {type(exc).__name__}: {exc}") from None
    _refuse_untrusted(skops_untrusted)


def save_classifier(
    path: str | os.PathLike,
    estimator: Pipeline,
    *,
    fingerprint: dict,
    label_names: list[str],
    info: dict,
) -> None:
    """Save a fitted pipeline and its metadata as one ``.skops`` file.

    ``fingerprint`` identifies the backbone whose features the classifier
    expects; ``label_names[i]`` names class ``i``; ``info`` is free JSON-able
    metadata. The file is written to a temporary name beside ``path`` and then
    renamed, so ``path`` is never left half-written.
    """
    if not isinstance(estimator, Pipeline):
        raise TypeError(f"estimator must be a sklearn Pipeline, got {type(estimator).__name__}")
    check_is_fitted(estimator)
    if not isinstance(fingerprint, dict) or not isinstance(info, dict):
        raise TypeError("fingerprint and info must be dicts")
    if isinstance(label_names, str):
        raise TypeError("label_names must be a list of names, not one string")
    label_names = [str(n) for n in label_names]
    classes = np.asarray(estimator.classes_)
    if np.issubdtype(classes.dtype, np.integer) and (
        classes.min() < 0 or classes.max() >= len(label_names)
    ):
        raise ValueError(
            f"the estimator predicts labels {classes.tolist()} but only "
            f"{len(label_names)} label names were given"
        )
    metadata = _to_json(
        {"fingerprint": fingerprint, "label_names": label_names, "info": info}, "metadata"
    )
    payload = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "estimator": estimator,
        "metadata": metadata,
    }
    data = sio.dumps(payload, compression=zipfile.ZIP_DEFLATED)
    # Never write a file that load_classifier would refuse.
    try:
        _audit(data)
    except UnsafeModelError as exc:
        raise ValueError(
            f"this estimator contains types featx does not trust on load ({', '.join(exc.untrusted)}); "
            "build it with featx.linear.make_pipeline"
        ) from None

    path = Path(path)
    write_bytes_atomically(path, data)  # O_EXCL temporary, fsync, rename, folder fsync


def load_classifier(path: str | os.PathLike) -> SavedClassifier:
    """Load a classifier saved by :func:`save_classifier`, without running code from it.

    Raises
    ------
    InputNotFound
        ``path`` does not exist or is a folder (a FileNotFoundError).
    UnsafeModelError
        The file refers to a type outside :data:`TRUSTED_TYPES`; nothing was built.
    ModelFileError
        The file is not a featx classifier (not a skops file, corrupt, or
        another kind of skops file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "a folder, not a classifier file" if os.path.isdir(path) else "not there"
        raise InputNotFound(f"no classifier file at {path} ({what}; `featx train` writes one)")
    # Read once: the bytes that are audited are the bytes that are loaded.
    with open(path, "rb") as f:
        data = f.read()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(
            f"{path} is not a featx classifier file (expected a .skops zip archive; "
            "pickle/joblib files are not accepted because loading them can run code)"
        )
    try:
        _audit(data)
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"{path}: {exc}", exc.untrusted) from None
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    try:
        payload = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        # Defence in depth: skops' own audit found what ours did not.
        raise UnsafeModelError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means a bad file
        raise ModelFileError(f"{path}: corrupt classifier file: {type(exc).__name__}: {exc}") from None

    if not (isinstance(payload, dict) and payload.get("format") == FILE_FORMAT):
        raise ModelFileError(f"{path} is a skops file but not a featx classifier")
    version = payload.get("format_version")
    if version != FILE_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has classifier format version {version!r}; this featx reads "
            f"version {FILE_FORMAT_VERSION}"
        )
    estimator = payload.get("estimator")
    try:
        metadata = json.loads(payload.get("metadata"))
        fingerprint, label_names, info = (
            metadata["fingerprint"],
            metadata["label_names"],
            metadata["info"],
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: corrupt classifier metadata: {exc}") from None
    if not isinstance(estimator, Pipeline):
        raise ModelFileError(f"{path}: no sklearn Pipeline inside")
    if not (
        isinstance(fingerprint, dict)
        and isinstance(info, dict)
        and isinstance(label_names, list)
        and all(isinstance(n, str) for n in label_names)
    ):
        raise ModelFileError(f"{path}: corrupt classifier metadata")
    return SavedClassifier(
        estimator=estimator, fingerprint=fingerprint, label_names=label_names, info=info
    )


_MISSING = "<missing>"


def check_fingerprint(expected: dict, actual: dict, *, what: str) -> None:
    """Raise :class:`FingerprintMismatch` unless the two fingerprints agree.

    Values are compared after a JSON round trip, so a tuple read from one
    source equals the list saved in a classifier file.
    """
    exp = json.loads(_to_json(expected, "expected fingerprint"))
    got = json.loads(_to_json(actual, "actual fingerprint"))
    differences = {
        key: (exp.get(key, _MISSING), got.get(key, _MISSING))
        for key in sorted(set(exp) | set(got))
        if exp.get(key, _MISSING) != got.get(key, _MISSING)
    }
    if differences:
        lines = "\n".join(
            f"  {key}: expected {e!r}, got {g!r}" for key, (e, g) in differences.items()
        )
        raise FingerprintMismatch(
            f"{what} does not match the backbone the classifier was trained on "
            f"({len(differences)} differing key{'s' if len(differences) > 1 else ''}):\n{lines}",
            differences,
        )
