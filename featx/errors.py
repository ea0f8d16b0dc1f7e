"""Exceptions that mean the same thing wherever they are raised (the CLI maps each to one exit code).

Each is defined here once and re-exported where callers look for it (``featx.store``,
``featx.linear``), so catching it by any of those names catches every origin."""

from __future__ import annotations

from typing import Any


class InputNotFound(FileNotFoundError):
    """A file or folder the user named does not exist or is not the kind of thing asked for
    (a folder where a store or a classifier file is expected). The CLI exits 2, as for any
    argument it cannot use."""


class StoreError(Exception):
    """A store cannot be used as asked (missing, not a featx store, damaged)."""


class FingerprintMismatch(StoreError, ValueError):
    """Features, a store or a classifier come from another backbone configuration than the one at hand.

    Raised by the store (appending to or merging stores of another backbone, a feature cache of
    another configuration) and by classifiers (features of another backbone than the one trained
    on). It is a :class:`StoreError` and a :class:`ValueError`, so code catching either still
    catches it, whichever side raised it. ``differences`` maps each differing fingerprint key to
    ``(expected, actual)`` where the raiser computed it (empty otherwise)."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        self.differences = dict(differences or {})
