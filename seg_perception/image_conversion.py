"""Validate and convert ``sensor_msgs/Image`` fields to RGB arrays, copying as little as possible.

Works on the message's plain fields (encoding, height, width, step, is_bigendian, data) so that it
runs and is tested without a ROS install. Every malformed message raises :class:`ImageRejected`
with a short machine-readable ``reason`` (used as the diagnostics counter key) and a human message.
The header checks run before the payload is touched, so a header claiming a huge image costs
nothing beyond the message itself.

Checks run in this order and the first failure is the reason (the order is part of the contract,
the fuzz tests assert it): ``encoding``, ``is_bigendian``, ``zero_size``, ``too_large``, ``step``,
``data_length``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Encodings we accept: (channels, bytes per channel).
SUPPORTED_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1),
    "rgb16": (3, 2), "bgr16": (3, 2), "rgba16": (4, 2), "bgra16": (4, 2), "mono16": (1, 2),
}

#: Default upper bound on width * height (a 4096 x 4096 camera), overridable per node.
DEFAULT_MAX_PIXELS = 4096 * 4096

#: Every reason :func:`check_image` can give, in check order.
REJECT_REASONS = ("encoding", "is_bigendian", "zero_size", "too_large", "step", "data_length")


class ImageRejected(ValueError):
    """A frame that cannot be segmented; ``reason`` is a stable counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _data_view(data: Any) -> memoryview:
    """A byte view of the message payload (``bytes``, ``array.array('B')``, list or ndarray)."""
    if isinstance(data, (list, tuple)):
        return memoryview(bytes(data))
    view = memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def check_image(
    encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> memoryview:
    """Validate the fields of an image message and return its payload as a byte view.

    Raises :class:`ImageRejected` with one of :data:`REJECT_REASONS`. ``data`` is looked at only
    after the header is known to be consistent and within ``max_pixels``.
    """
    layout = SUPPORTED_ENCODINGS.get(encoding) if isinstance(encoding, str) else None
    if layout is None:
        raise ImageRejected(
            "encoding",
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
        )
    if is_bigendian not in (0, 1):
        raise ImageRejected("is_bigendian", f"is_bigendian must be 0 or 1, got {is_bigendian!r}")
    if height <= 0 or width <= 0:
        raise ImageRejected("zero_size", f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"image {width}x{height} exceeds max_pixels={max_pixels}")
    channels, depth = layout
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageRejected(
            "step", f"step {step} is smaller than width*channels*bytes = {row_bytes} for {encoding}"
        )
    view = _data_view(data)
    if len(view) != step * height:
        raise ImageRejected(
            "data_length",
            f"data has {len(view)} bytes, expected step*height = {step}*{height} = {step * height}",
        )
    return view


def image_to_rgb(
    encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Return an ``HxWx3`` uint8 RGB array for a valid image message.

    rgb8 is a zero-copy view of the payload (strided when rows are padded); the other 8-bit
    encodings are reordered or expanded once. 16-bit encodings keep the most significant byte of
    each sample (``value >> 8``), read from the position ``is_bigendian`` says it is in.
    """
    view = check_image(encoding, height, width, step, data, is_bigendian, max_pixels)
    channels, depth = SUPPORTED_ENCODINGS[encoding]
    rows = np.frombuffer(view, dtype=np.uint8).reshape(height, step)
    samples = rows[:, : width * channels * depth].reshape(height, width, channels, depth)
    pixels = samples[..., 0 if (depth == 1 or is_bigendian) else 1]
    if encoding.startswith("rgba"):
        return pixels[:, :, :3]
    if encoding.startswith("rgb"):
        return pixels
    if encoding.startswith("bgr"):
        return pixels[:, :, 2::-1]
    return np.repeat(pixels, 3, axis=2)  # mono


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`image_to_rgb` for anything with the fields of ``sensor_msgs/Image``."""
    return image_to_rgb(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels
    )
