"""What decoding one file gives back: a :class:`Decoded` with pixels, or a :class:`Skip` saying why not.

:class:`DecodeError` carries a Skip out of the decoding steps; :data:`SKIP_KINDS` lists every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKIP_KINDS = (
    "missing",  # no such file, or a symlink whose target is gone
    "unreadable",  # exists, but the OS won't give us its bytes (directory, permission, I/O)
    "empty",  # zero bytes
    "not_an_image",  # bytes Pillow cannot identify as any image format (text, HTML, PDF, HEIC...)
    "truncated",  # a real image whose data ends early (aborted download, partial copy)
    "decompression_bomb",  # declared size too large to decode safely
    "too_small",  # width or height below 1 pixel
    "corrupt",  # an image format was recognised but its data is damaged
    "timeout",  # reading + decoding ran past the per-image time limit (set by featx.pipeline)
)


@dataclass(frozen=True)
class Skip:
    """Why a file yields no pixels: ``kind`` (one of SKIP_KINDS) and a human sentence."""

    kind: str
    detail: str

    def __post_init__(self) -> None:
        # A typo'd kind would silently break per-kind reporting downstream; fail where it is made.
        if self.kind not in SKIP_KINDS:
            raise ValueError(f"Skip kind must be one of {SKIP_KINDS}, got {self.kind!r}")

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


# eq=False: the generated __eq__ would compare ``pixels`` arrays with ==, which raises
# "truth value of an array is ambiguous"; identity equality is the honest choice here.
@dataclass(frozen=True, eq=False)
class Decoded:
    """The outcome of decoding one file: pixels, or a skip; plus the file's identity."""

    path: str
    sha256: str  # hex sha256 of the exact file bytes; "" when the file could not be read
    nbytes: int  # file size in bytes (-1 if unknown)
    mtime_ns: int  # os.stat mtime_ns (-1 if unknown)
    # uint8 (height, width, 3), C-contiguous. None when skipped, and also (with skip None) when
    # decode_file was told the content hash is already known (see known_hashes).
    pixels: np.ndarray | None
    skip: Skip | None
    # The file's bytes, only when decode_file's `defer` took the file for a batched decoder
    # (featx.gpudecode): pixels and skip are then None until decode_deferred or that decoder runs.
    encoded: bytes | None = None


class DecodeError(Exception):
    """Bad image data; ``.skip`` says what kind and why."""

    def __init__(self, skip: Skip) -> None:
        # Pass skip as the only arg so the exception pickles (processes) and unpickles intact.
        super().__init__(skip)
        self.skip = skip

    def __str__(self) -> str:
        return str(self.skip)
