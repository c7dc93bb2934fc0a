"""One registry of segmentation architectures, keyed by name and variant.

Each architecture file registers a builder per variant with :func:`register_model`. Everything
that selects a model (config, launch argument, CLI) goes through :func:`build_model`, so an
unknown name, variant or option fails at configuration time with the valid choices listed.

Each variant also records how its input is normalised (:class:`~seg_perception.normalization.
Normalization`: mean, std, channel order; ImageNet RGB unless registered otherwise), as timm's
pretrained config does. The engine's preprocessing, training and the ONNX export metadata all
read it from here (:func:`normalization_for`), so a model trained on other statistics is
registered once and fed correctly everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..normalization import IMAGENET, Normalization

ModelBuilder = Callable[..., nn.Module]


class ModelConfigError(ValueError):
    """A model name, variant or option that the registry cannot build."""


@dataclass
class ModelEntry:
    """All variants of one architecture."""

    name: str
    description: str = ""
    paper: str = ""
    default_variant: str | None = None
    builders: dict[str, ModelBuilder] = field(default_factory=dict)
    #: Input normalisation per variant (the data its weights were trained with).
    normalizations: dict[str, Normalization] = field(default_factory=dict)

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.builders)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, variant: str, *, default: bool = False, description: str = "", paper: str = "",
    normalization: Normalization = IMAGENET,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes=..., **options)`` as ``name``/``variant``,
    whose weights expect input normalised with ``normalization``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        entry = _REGISTRY.setdefault(name, ModelEntry(name))
        if variant in entry.builders:
            raise RuntimeError(f"model {name!r} variant {variant!r} registered twice")
        entry.builders[variant] = builder
        entry.normalizations[variant] = normalization.validate()
        entry.description = entry.description or description
        entry.paper = entry.paper or paper
        if default or entry.default_variant is None:
            entry.default_variant = variant
        return builder

    return decorator


def list_models() -> dict[str, ModelEntry]:
    """All registered architectures, in registration order."""
    return dict(_REGISTRY)


def resolve(name: str, variant: str | None = None) -> tuple[ModelEntry, str]:
    """Return the registry entry and the concrete variant, or raise :class:`ModelConfigError`."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelConfigError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}"
        )
    chosen = variant or entry.default_variant
    if chosen not in entry.builders:
        raise ModelConfigError(
            f"unknown variant {variant!r} for model {name!r}; valid variants: "
            f"{', '.join(entry.variants)}"
        )
    return entry, chosen


def normalization_for(name: str, variant: str | None = None) -> Normalization:
    """How ``name``/``variant`` wants its input normalised (:class:`ModelConfigError` if unknown)."""
    entry, chosen = resolve(name, variant)
    return entry.normalizations[chosen]


def model_options(name: str, variant: str | None = None) -> tuple[str, ...]:
    """Names of the keyword options the builder of ``name``/``variant`` accepts."""
    entry, chosen = resolve(name, variant)
    params = inspect.signature(entry.builders[chosen]).parameters
    return tuple(p for p in params if p != "num_classes")


def model_option_defaults(name: str, variant: str | None = None) -> dict[str, object]:
    """The keyword options of ``name``/``variant`` with their defaults (None when required), so
    option values can be type-checked when they are set, not when the model is built."""
    entry, chosen = resolve(name, variant)
    params = inspect.signature(entry.builders[chosen]).parameters
    return {p.name: None if p.default is inspect.Parameter.empty else p.default
            for p in params.values() if p.name != "num_classes"}


def build_model(
    name: str, num_classes: int = 19, variant: str | None = None, **options: object
) -> nn.Module:
    """Build an architecture from the registry (random init; load weights separately).

    Raises :class:`ModelConfigError` naming the valid choices for an unknown name, variant or
    option, or a non-positive class count.
    """
    entry, chosen = resolve(name, variant)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    valid = model_options(name, chosen)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelConfigError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r} variant {chosen!r}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    model = entry.builders[chosen](num_classes=num_classes, **options)
    model.model_name = name
    model.variant = chosen
    model.num_classes = num_classes
    model.normalization = entry.normalizations[chosen]
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable and frozen) of a model."""
    return sum(p.numel() for p in model.parameters())
