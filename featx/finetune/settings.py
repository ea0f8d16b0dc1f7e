"""How fine-tuning trains: `FinetuneSettings`, checked in one place before any work starts.

``finetune()`` keeps its keyword arguments and folds them into one of these (``coerce``); the
checked copy (``check``) is what the training steps read and what the model file records.

>>> s = FinetuneSettings(unfreeze="3", augment="flip,zoom").check()
>>> s.unfreeze, s.augment, s.head_epochs
(3, ('flip', 'zoom'), 0)
>>> FinetuneSettings(head_init="random").check().head_epochs
5
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Sequence

AUGMENTATIONS = ("flip", "rotate", "zoom", "shear", "translate", "contrast")
DEFAULT_AUGMENT = ("flip", "rotate", "zoom", "contrast")
MONITORS = ("val_loss", "val_accuracy")
HEAD_INITS = ("probe", "random")


class FinetuneError(ValueError):
    """Fine-tuning cannot run as asked (data, arguments or model file)."""


def parse_augment(augment: str | Sequence[str] | None) -> tuple[str, ...]:
    """"flip,rotate" / ["flip", "rotate"] / "none" → a checked tuple of augmentation names."""
    if augment is None:
        return ()
    names = [a.strip().lower() for a in (augment.split(",") if isinstance(augment, str) else augment)]
    names = [n for n in names if n and n != "none"]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise FinetuneError(f"unknown augmentation {unknown}; choose from {', '.join(AUGMENTATIONS)} or none")
    return tuple(dict.fromkeys(names))


def mixed_precision_policy(mixed_precision: bool | str | None) -> str | None:
    """The Keras dtype policy that ``mixed_precision`` asks for (None: plain float32)."""
    if not mixed_precision:
        return None
    if isinstance(mixed_precision, str) and mixed_precision not in ("auto", "true"):
        name = mixed_precision if mixed_precision.startswith("mixed_") else f"mixed_{mixed_precision}"
        if name not in ("mixed_float16", "mixed_bfloat16"):
            raise FinetuneError(f"mixed precision must be float16 or bfloat16, got {mixed_precision!r}")
        return name
    from featx.runtime import accelerators

    # float16 needs loss scaling but is what most GPUs run fastest; CPUs only have bfloat16 kernels.
    return "mixed_float16" if accelerators() else "mixed_bfloat16"


@dataclass(frozen=True)
class FinetuneSettings:
    """The training settings of ``finetune()`` (see its docstring); defaults are its defaults.

    ``head_epochs=None`` means 0 after the probe head and 5 for a random one; ``seed`` seeds the
    Keras random state, the augmentation, dropout, the batch order and the probe's CV.
    """

    epochs: int = 10
    unfreeze: int | str = 2
    lr: float = 1e-4
    head_init: str = "probe"
    head_epochs: int | None = None
    head_lr: float = 1e-3
    augment: str | Sequence[str] | None = DEFAULT_AUGMENT
    batch_size: int = 32
    mixed_precision: bool | str | None = False
    dropout: float = 0.2
    l2: float = 1e-4
    class_weight: str | None = None
    monitor: str = "val_loss"
    monitor_fraction: float = 0.1
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, list):  # a JSON list is the same setting as the tuple
            object.__setattr__(self, "augment", tuple(self.augment))

    @classmethod
    def coerce(cls, settings: "FinetuneSettings | None" = None, **keywords: Any) -> "FinetuneSettings":
        """Settings from ``finetune()``'s keywords, or `settings` with the keywords that differ from
        their defaults overriding it."""
        if settings is None:
            return cls(**keywords)
        default = cls()
        changed = {k: v for k, v in keywords.items() if v != getattr(default, k)}
        return replace(settings, **changed) if changed else settings

    def check(self) -> "FinetuneSettings":
        """Raise FinetuneError for a bad setting; return the settings in canonical form (augment a
        tuple, unfreeze an int or "all", head_epochs a number, mixed_precision a policy or None)."""
        augment = parse_augment(self.augment)
        if self.head_init not in HEAD_INITS:
            raise FinetuneError(f"head_init must be 'probe' or 'random', got {self.head_init!r}")
        if self.monitor not in MONITORS:
            raise FinetuneError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.unfreeze != "all" and (not str(self.unfreeze).isdigit()):
            raise FinetuneError(f"unfreeze must be a number of blocks or 'all', got {self.unfreeze!r}")
        unfreeze = self.unfreeze if self.unfreeze == "all" else int(self.unfreeze)
        head_epochs = (0 if self.head_init == "probe" else 5) if self.head_epochs is None else int(self.head_epochs)
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size - 1),
                            ("patience", self.patience - 1), ("head_epochs", head_epochs)):
            if int(value) < 0:
                raise FinetuneError(f"{name.replace('_', ' ')} is too small: {value}")
        if not 0 < self.monitor_fraction < 0.5:
            raise FinetuneError(f"monitor fraction must be in (0, 0.5), got {self.monitor_fraction}")
        if self.class_weight not in (None, "balanced"):
            raise FinetuneError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        policy = mixed_precision_policy(self.mixed_precision)
        return replace(self, augment=augment, unfreeze=unfreeze, head_epochs=head_epochs, mixed_precision=policy)

    def to_dict(self) -> dict:
        """JSON-safe, as recorded in the model file and the result (augment as a list)."""
        out = asdict(self)
        if out["augment"] is not None and not isinstance(out["augment"], str):
            out["augment"] = list(out["augment"])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
