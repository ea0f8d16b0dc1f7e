"""The store-level entry point of out-of-core training (``featx train --sgd``): search, refit, save.

:func:`train_store_sgd` runs :func:`featx.linear.sgd.search_sgd` on a store's train split, optionally
with the candidates on a Dask cluster (connected by :func:`featx.distributed.connect`, imported only
then, so Dask stays optional), and saves the refitted best with
:func:`featx.linear.files.save_classifier`, bound to the store's fingerprint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from featx.linear.files import save_classifier
from featx.linear.sgd import SGD_PENALTIES, search_sgd

if TYPE_CHECKING:
    from distributed import Client

    from featx.classify import TrainReport
    from featx.distributed import ClusterSpec

__all__ = ["train_store_sgd"]


def train_store_sgd(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classifier: str = "svm",
    penalty: str = "l2",
    alphas: Sequence[float] | None = None,
    l1_ratio: float = 0.15,
    epochs: int = 5,
    chunk_size: int = 4096,
    holdout_fraction: float = 0.2,
    class_weight: str | None = None,
    random_state: int = 0,
    cluster: "str | ClusterSpec | Client | None" = None,
    n_jobs: int | None = None,
) -> "TrainReport":
    """Out-of-core linear classifier for a store of any size: averaged SGD chunk by chunk
    (:func:`featx.linear.sgd.train_sgd`), its ``alpha`` (and loss/penalty with ``all``) chosen on a held-out
    part of the train split (:func:`featx.linear.sgd.search_sgd`), then refitted on the whole train split and
    saved bound to the store's fingerprint.

    `classifier` is ``svm`` (hinge loss), ``logreg`` (log loss) or ``all``; `penalty` ``l1``, ``l2``,
    ``elasticnet`` or ``all``. With `cluster` the candidates run on Dask workers through joblib's dask
    backend (the workers must read `store` at the same path); otherwise `n_jobs` local processes.
    """
    from featx.classify import TrainReport  # featx.classify imports featx.linear: import it here, not above
    from featx.runtime import versions
    from featx.store import FeatureStore

    started = time.perf_counter()
    losses = {"svm": ["hinge"], "logreg": ["log_loss"], "all": ["hinge", "log_loss"]}.get(classifier)
    if losses is None:
        raise ValueError(f"classifier must be svm, logreg or all, got {classifier!r}")
    penalties = list(SGD_PENALTIES) if penalty == "all" else [penalty]
    kwargs = dict(losses=losses, penalties=penalties, alphas=alphas, l1_ratio=l1_ratio, epochs=epochs,
                  chunk_size=chunk_size, holdout_fraction=holdout_fraction, class_weight=class_weight,
                  random_state=random_state)
    if cluster is None:
        result = search_sgd(store, n_jobs=n_jobs, **kwargs)
    else:
        import joblib

        from featx.distributed import connect  # Dask itself is imported by connect(), so only with a cluster

        with connect(cluster) as client, joblib.parallel_config(backend="dask", client=client):
            result = search_sgd(store, n_jobs=-1 if n_jobs is None else n_jobs, **kwargs)
    with FeatureStore(store) as fs:
        info = {
            "name": result.name, "candidates": result.candidates, "scoring": "accuracy",
            "selection": f"held-out {holdout_fraction:g} of the train split", "class_weight": class_weight,
            "n_train": result.n_train, "store": str(Path(store).resolve()), "fingerprint_id": fs.fingerprint_id,
            "random_weights": fs.random_weights, "versions": versions(), "cluster": None if cluster is None
            else str(cluster), "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        save_classifier(out, result.estimator, fingerprint=fs.fingerprint, label_names=fs.label_names, info=info)
        return TrainReport(str(out), result.name, result.candidates, result.n_train, fs.label_names,
                           fs.random_weights, time.perf_counter() - started)
