"""The `featx` command line: argument parsing (featx.cli.parser) and printing (featx.cli.commands)
only; every command calls the library.

Exit codes: 0 success (skipped files are allowed and reported), 1 failure, 2 usage error (bad
arguments, or an input path that does not exist or is the wrong kind: a folder given as a store).
"""

from __future__ import annotations

import logging
import os
import sys

from featx.cli.commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from featx.cli.parser import build_parser
from featx.runtime import quiet_backend_logs

__all__ = ["main", "build_parser", "UsageError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]


def main(argv: list[str] | None = None) -> int:
    """Run one `featx` command; returns its exit code (argparse's own usage errors exit 2)."""
    quiet_backend_logs()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="featx: %(message)s", stream=sys.stderr)
    if args.offline:  # through the environment, so local Dask workers and every command path see it
        os.environ["FEATX_OFFLINE"] = "1"
    return _run(args)


def _run(args) -> int:
    """The command, with each kind of error mapped to one exit code and one line on stderr."""
    from featx.backbones import UnknownBackbone, WeightsUnavailable
    from featx.errors import InputNotFound
    from featx.sources import SourceError
    from featx.store import StoreError

    try:
        return args.func(args)
    except (UsageError, UnknownBackbone, SourceError, InputNotFound) as exc:
        # the command cannot be carried out as given: a bad argument, or a path that is not there
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except (WeightsUnavailable, StoreError, ValueError, OSError, RuntimeError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # store, model-file and fingerprint errors all land here with their message
        if args.verbose:
            raise
        print(f"featx {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
