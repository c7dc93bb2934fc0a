"""How a network wants its input normalised: per-channel mean and std, and the channel order.

This is data, not a constant of the engine: each model registry entry carries one (as timm's
pretrained config does), the engine's preprocessing applies the one it is given, training
normalises its crops with it, and the ONNX export records it in the file's metadata, so an
exported network says how to feed it.

The input convention: pixel values scaled to 0..1, channels put in ``channel_order``, then
``(x - mean[c]) / std[c]`` per channel ``c`` of the network's input, in that order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from .choices import CHANNEL_ORDERS

#: ImageNet statistics (RGB, 0..1 scale), which every registered model was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizationError(ValueError):
    """A mean, std or channel order that cannot describe a network's input."""


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std (0..1 scale, in ``channel_order``) and the channel order."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"

    def validate(self) -> Normalization:
        """Raise :class:`NormalizationError` naming the bad field; returns self."""
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise NormalizationError(f"{name} must be 3 finite numbers (one per channel), got {list(values)[:4]}")
        if any(v <= 0 for v in self.std):
            raise NormalizationError(f"std must be > 0 per channel, got {list(self.std)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise NormalizationError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, "
                                     f"got {str(self.channel_order)[:40]!r}")
        return self

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries an exported ONNX file records (strings, JSON lists)."""
        return {"mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
                "channel_order": self.channel_order}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Normalization | None:
        """Read what :meth:`to_metadata` wrote; None when the file records no normalisation."""
        if not {"mean", "std", "channel_order"} <= set(metadata):
            return None
        try:
            mean, std = json.loads(metadata["mean"]), json.loads(metadata["std"])
            found = cls(tuple(float(v) for v in mean), tuple(float(v) for v in std),  # type: ignore[arg-type]
                        metadata["channel_order"])
        except (TypeError, ValueError) as exc:
            raise NormalizationError(f"unreadable normalisation metadata: {str(exc)[:200]}") from None
        return found.validate()


#: ImageNet mean/std on RGB input: the registry's default.
IMAGENET = Normalization()
