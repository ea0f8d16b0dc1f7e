"""Class balance and split sizes: counts per split and class, and warnings where they look wrong."""

from __future__ import annotations

from collections import Counter

import numpy as np

from featx.audit.findings import Balance

MIN_PER_CLASS = 5        # fewer images of a class in a split: its per-class scores mean little
IMBALANCE_WARNING = 10.0  # largest / smallest class above this: accuracy hides the small classes


def class_balance(label_names: list[str], y: np.ndarray, splits: np.ndarray) -> Balance:
    split_names = sorted(set(splits.tolist()), key=lambda s: (["train", "validation", "test", ""] + [s]).index(s))
    counts = {}
    for split in split_names:
        in_split = Counter(y[splits == split].tolist())
        counts[split or "(none)"] = {name: int(in_split.get(i, 0)) for i, name in enumerate(label_names)}
    per_class = {name: int((y == i).sum()) for i, name in enumerate(label_names)}
    per_split = {split or "(none)": int((splits == split).sum()) for split in split_names}
    present = [n for n in per_class.values() if n > 0]
    ratio = max(present) / min(present) if present else float("nan")
    warnings = []
    if present and ratio > IMBALANCE_WARNING:
        warnings.append(f"classes are imbalanced {ratio:.1f}:1 (largest / smallest); accuracy hides the small "
                        "classes, look at balanced accuracy or per-class recall")
    for split, by_class in counts.items():
        if split in ("train", "(none)"):
            continue
        small = [c for c, n in by_class.items() if n < MIN_PER_CLASS and per_class[c] > 0]
        if small:
            warnings.append(f"split {split} has fewer than {MIN_PER_CLASS} images of {len(small)} classes "
                            f"({', '.join(small[:5])}{', …' if len(small) > 5 else ''}): their scores are noise")
    if "train" in counts and not ({"validation", "test"} & set(counts)):
        warnings.append("no validation or test split: nothing is held out")
    unlabelled = int((y < 0).sum())
    if unlabelled:
        warnings.append(f"{unlabelled} rows have no label: left out of the label check")
    return Balance(counts=counts, per_class=per_class, per_split=per_split, unlabelled=unlabelled,
                   imbalance_ratio=float(ratio), warnings=warnings)
