"""Exceptions that mean the same thing wherever they are raised (the CLI maps each to one exit code)."""

from __future__ import annotations


class InputNotFound(FileNotFoundError):
    """A file or folder the user named does not exist or is not the kind of thing asked for
    (a folder where a store or a classifier file is expected). The CLI exits 2, as for any
    argument it cannot use."""
