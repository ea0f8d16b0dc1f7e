"""Argument checks shared by the CV search (:mod:`featx.linear.cv`) and out-of-core SGD
(:mod:`featx.linear.sgd`), so both refuse bad options with the same messages."""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_choice(value: Any, allowed: tuple, what: str) -> None:
    if value not in allowed:
        allowed_txt = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed_txt}")


def _check_class_weight(class_weight: Any) -> None:
    if class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict):
        return
    raise ValueError(
        f"unknown class_weight {class_weight!r}; expected None, 'balanced' "
        "or a dict {class: weight}"
    )



def _class_name(label: Any, label_names: list[str] | None) -> str:
    if label_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(label_names):
        return f"{label_names[int(label)]!r} (label {int(label)})"
    return repr(label.item() if isinstance(label, np.generic) else label)
