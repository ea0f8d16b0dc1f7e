"""Where the examples get images: a folder you pass, or scikit-learn's digits written as PNGs (offline)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def image_folder(argv: list[str]) -> Path:
    """DATA from the command line (class folders), else the offline digits set under cache/."""
    if len(argv) > 1:
        return Path(argv[1])
    from featx.demo import write_digits

    return write_digits(workdir() / "digits")


def workdir() -> Path:
    """Where the examples write stores and models: $FEATX_EXAMPLES_WORKDIR, else cache/examples."""
    out = Path(os.environ.get("FEATX_EXAMPLES_WORKDIR") or REPO / "cache" / "examples")
    out.mkdir(parents=True, exist_ok=True)
    return out


if __name__ == "__main__":
    print(image_folder(sys.argv))
