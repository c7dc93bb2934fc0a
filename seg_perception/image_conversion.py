"""Validate and convert ``sensor_msgs/Image`` fields to RGB arrays without copying, and back.

Works on the message's plain fields (encoding, height, width, step, is_bigendian, data) so that it
runs and is tested without a ROS install. Every malformed message raises :class:`ImageRejected`
with a short machine-readable ``reason`` (used as the diagnostics counter key) and a human message.
The checks run before anything is allocated, so a header claiming a huge image costs nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Encodings we accept, and their channel count. All are 8 bits per channel.
SUPPORTED_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

#: Default upper bound on width * height (a 4096 x 4096 camera), overridable per node.
DEFAULT_MAX_PIXELS = 4096 * 4096


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

    Raises :class:`ImageRejected` with reasons ``encoding``, ``zero_size``, ``too_large``,
    ``step`` or ``data_length``.
    """
    channels = SUPPORTED_ENCODINGS.get(encoding)
    if channels is None:
        raise ImageRejected(
            "encoding",
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
        )
    if height <= 0 or width <= 0:
        raise ImageRejected("zero_size", f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large", f"image {width}x{height} exceeds max_pixels={max_pixels}"
        )
    if step < width * channels:
        raise ImageRejected(
            "step", f"step {step} is smaller than width*channels = {width * channels} for {encoding}"
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

    rgb8 with ``step == width*3`` is a zero-copy view of the payload; other encodings are
    reordered or expanded once. (``is_bigendian`` does not affect 8-bit encodings.)
    """
    view = check_image(encoding, height, width, step, data, is_bigendian, max_pixels)
    channels = SUPPORTED_ENCODINGS[encoding]
    rows = np.frombuffer(view, dtype=np.uint8).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels
    if encoding == "rgba8":
        return pixels[:, :, :3]
    if encoding in ("bgr8", "bgra8"):
        return pixels[:, :, 2::-1]
    return np.repeat(pixels, 3, axis=2)  # mono8


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`image_to_rgb` for anything with the fields of ``sensor_msgs/Image``."""
    return image_to_rgb(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels
    )
