"""`featx audit STORE [--out DIR] [--json] [--fix-manifest CSV]`: the command's arguments and output.

Exit codes are the CLI's: 0 the audit ran (findings are not failures), 1 the store cannot be audited
(empty, one class, no labels: one line on stderr), 2 a missing store or bad arguments.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    """Register `audit` on the `featx` sub-command parsers."""
    from featx.audit.duplicates import NEAR_THRESHOLD
    from featx.audit.outliers import OUTLIER_Z

    p = subparsers.add_parser(
        "audit", help="find label errors, duplicates and leaks between splits, outliers, class imbalance",
        description="Audits the data behind a store from its cached features (no image is decoded, nothing is "
                    "modified): likely label errors (out-of-fold linear probe + confident learning), exact and "
                    "near duplicates (leaks across splits first), outliers and class balance. Example: featx "
                    "audit cache/flowers.h5 --out reports/flowers-audit")
    p.add_argument("store")
    p.add_argument("--out", default=None, help="folder for audit.json and audit.html (with thumbnails)")
    p.add_argument("--json", action="store_true", help="print every finding as JSON")
    p.add_argument("--fix-manifest", default=None, metavar="CSV",
                   help="write a CSV manifest (path,label,split,suggested_label) without the leaked copies")
    p.add_argument("--cv", type=int, default=5, help="folds of the out-of-fold probe (default 5)")
    p.add_argument("--near-threshold", type=float, default=NEAR_THRESHOLD,
                   help="centred cosine similarity from which two files are near duplicates "
                        f"(default {NEAR_THRESHOLD})")
    p.add_argument("--outlier-z", type=float, default=OUTLIER_Z,
                   help=f"robust z-score from which an image is an outlier (default {OUTLIER_Z})")
    p.add_argument("--neighbours", choices=["auto", "exact", "ivf"], default="auto",
                   help="neighbour search: exact up to 100,000 rows, faiss IVF above (default auto)")
    p.add_argument("--top", type=int, default=10, help="findings of each kind shown on the terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from featx.audit import audit

    result = audit(args.store, cv=args.cv, near_threshold=args.near_threshold, outlier_z=args.outlier_z,
                   neighbours=args.neighbours)
    written = []
    if args.out:
        from featx.audit.html import write_audit

        written += [str(p) for p in write_audit(result, args.out).values()]
    if args.fix_manifest:
        from featx.audit.manifest import write_manifest

        kept, dropped = write_manifest(result, args.fix_manifest)
        written.append(f"{args.fix_manifest} ({kept} rows, {dropped} leaked copies left out)")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format(top=args.top))
        for w in written:
            print(f"wrote        {w}")
    return 0
