"""The two groups of settings that travel together through featx: which backbone (BackboneConfig)
and how an image set is split (SplitConfig).

Public functions (``extract``, ``finetune``, ``compare``, ``extract_distributed``,
``FeatureExtractor``) keep their keyword arguments, fold them into these objects once at the top, and
pass the objects on, so a setting is spelled out in one place and a layer in between (compare →
finetune, the Dask client → its workers, the CLI → the library) cannot drop one on the way.

>>> cfg = BackboneConfig("mobilenet_0.25", image_size=96)
>>> cfg.check().name, cfg.to_dict()["image_size"]
('mobilenet_0.25', 96)
>>> BackboneConfig.from_dict(cfg.to_dict()) == cfg
True
>>> SplitConfig(validation_fraction=0.25, seed=3).check().validation_fraction
0.25
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featx.backbones import Backbone
    from featx.sources import ImageSet

DEFAULT_BACKBONE = "efficientnetb0"  # featx.backbones re-exports it; kept here so config needs no Keras


@dataclass(frozen=True)
class BackboneConfig:
    """What determines a backbone's features, plus how its weights may be fetched.

    ``name``: a registry name (``featx backbones``); ``weights``: "imagenet", a weights file path, or
    None / "none" for seeded random weights (said everywhere); ``image_size``: int or (H, W), default
    the backbone's own; ``pooling``: "avg" or "max"; ``layer``: a named inner layer instead of the last
    block; ``precision``: what the model computes in (featx.precision); ``views``: "one", "flip" or
    "flip+crops", averaged per image; ``layers``: several feature sets from one pass, ("LAYER[:POOLING]",
    ...) (both: featx.featuresets). ``weights_mirror`` / ``offline`` say only how a missing ImageNet
    file is fetched (they never change the features).
    """

    name: str = DEFAULT_BACKBONE
    _: KW_ONLY  # the rest by keyword: a field added later cannot shift a positional caller's settings
    weights: str | None = "imagenet"
    image_size: int | tuple[int, int] | None = None
    pooling: str = "avg"
    layer: str | None = None
    precision: str = "float32"
    views: str = "one"
    layers: tuple[str, ...] | None = None
    weights_mirror: str | None = None
    offline: bool | None = None

    def __post_init__(self) -> None:
        # A path object and a JSON list are the same settings as their str / tuple: normalise, so two
        # equal configurations compare (and hash, and cache) equal.
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))
        if self.layers is not None and not isinstance(self.layers, tuple):  # "a,b" or a JSON list
            layers = self.layers.split(",") if isinstance(self.layers, str) else self.layers
            object.__setattr__(self, "layers", tuple(layers))

    @classmethod
    def coerce(cls, backbone: "str | BackboneConfig | None" = None, **settings: Any) -> "BackboneConfig":
        """A config from what a public function was given: a registry name plus keywords, or a config
        (keywords that differ from their defaults then override it). None values of ``precision``
        mean "the default"."""
        settings = {k: v for k, v in settings.items() if not (k == "precision" and v is None)}
        if isinstance(backbone, cls):
            default = cls()
            changed = {k: v for k, v in settings.items() if v != getattr(default, k)}
            return replace(backbone, **changed) if changed else backbone
        return cls(backbone or DEFAULT_BACKBONE, **settings)

    def check(self) -> "BackboneConfig":
        """Cheap validation (no Keras): a known backbone, a valid pooling, precision, views and layers.
        Returns the config with the canonical registry name and layer names (``LAYER:POOLING``), so a
        typo fails before a large folder is scanned."""
        from featx.backbones import POOLINGS, get_spec
        from featx.featuresets import canonical_layers, check_views
        from featx.precision import check_precision

        spec = get_spec(self.name)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        check_precision(self.precision)
        check_views(self.views)
        layers = canonical_layers(self.layers, self.pooling)
        if layers is not None and self.layer is not None:
            raise ValueError("give layer (one inner layer) or layers (several feature sets), not both")
        canonical = {"name": spec.name, "layers": layers}
        changed = {k: v for k, v in canonical.items() if getattr(self, k) != v}
        return replace(self, **changed) if changed else self

    def build(self, *, seed: int = 0) -> "Backbone":
        """A new backbone of these settings (featx.backbones.Backbone.build); ``seed`` seeds random
        weights (``weights=None``) and nothing else."""
        from featx.backbones import Backbone

        return Backbone.build(self.name, seed=seed, **self._build_kwargs())

    def shared(self) -> "Backbone":
        """The process-wide backbone of these settings, built once (featx.backbones.shared_backbone)."""
        from featx.backbones import shared_backbone

        return shared_backbone(self.name, **self._build_kwargs())

    def _build_kwargs(self) -> dict:
        weights = None if self.weights in (None, "none") else self.weights
        return {"weights": weights, "image_size": self.image_size, "pooling": self.pooling, "layer": self.layer,
                "precision": self.precision, "weights_mirror": self.weights_mirror, "offline": self.offline,
                "views": self.views, "layers": self.layers}

    def to_dict(self) -> dict:
        """JSON-safe (for a Dask task, a report, a CLI --json)."""
        out = asdict(self)
        if isinstance(out["image_size"], tuple):
            out["image_size"] = list(out["image_size"])
        if out["layers"] is not None:
            out["layers"] = list(out["layers"])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class SplitConfig:
    """How an image set without split folders is split: stratified per class by a seeded hash of each
    relative path (featx.sources.assign_splits), so an image keeps its split when files are added and
    every command (extract, finetune, compare) makes the same split of the same data."""

    validation_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0

    def check(self) -> "SplitConfig":
        from featx.sources import SourceError

        v, t = self.validation_fraction, self.test_fraction
        if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
            raise SourceError("validation and test fractions must be in [0, 1) and sum to less than 1")
        return self

    def apply(self, image_set: "ImageSet") -> "ImageSet":
        """`image_set` with every item given a split (unchanged if it already has splits)."""
        from featx.sources import assign_splits

        return assign_splits(image_set, validation_fraction=self.validation_fraction,
                             test_fraction=self.test_fraction, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)
