"""Camera images of a drive bag as RGB arrays, whether recorded raw or compressed.

Raw ``sensor_msgs/Image`` goes through the node's own conversion. ``sensor_msgs/CompressedImage``
(JPEG or PNG, as image_transport's compressed plugin writes it: ``format`` such as
``"rgb8; jpeg compressed bgr8"``, or a plain ``jpeg``/``png``) is decoded with OpenCV. The image
size is read from the header bytes first, so a frame claiming more than ``max_pixels`` is rejected
before any pixel is decoded, and a frame that cannot be decoded is rejected with a reason, never
skipped. The evaluator runs offline, so one decoder that every install has (OpenCV) is enough;
the node's faster decode path lives with the node.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..image_conversion import DEFAULT_MAX_PIXELS, ImageRejected, image_msg_to_rgb

#: Reasons a compressed frame is rejected (counted in the report's frame accounting).
COMPRESSED_REJECT_REASONS = ("compressed_format", "undecodable", "too_large")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, ...); C4, C8 and CC are other segments.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: The IJG (libjpeg) luminance quantisation table at quality 50, the base of its quality scale.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)


def _codec_of(data: bytes) -> str | None:
    if data[:8] == _PNG_MAGIC:
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    return None


def _jpeg_segments(data: bytes):
    """(marker, payload) of the JPEG header segments up to the start of scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        yield marker, data[pos + 4:pos + 2 + length]
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        pos += 2 + length


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(codec, height, width) from the header bytes, or None when they are not JPEG/PNG."""
    codec = _codec_of(data)
    if codec == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return codec, height, width
    if codec == "jpeg":
        for marker, payload in _jpeg_segments(data):
            if marker in _SOF_MARKERS and len(payload) >= 5:
                height, width = struct.unpack(">HH", payload[1:5])
                return codec, height, width
    return None


def jpeg_quality(data: bytes) -> int | None:
    """The libjpeg quality setting a JPEG was written with, when its luminance table is exactly
    IJG's at some quality (OpenCV, libjpeg-turbo, image_transport); None otherwise."""
    for marker, payload in _jpeg_segments(data):
        if marker != 0xDB:
            continue
        pos = 0
        while pos < len(payload):
            precision, table_id = payload[pos] >> 4, payload[pos] & 0x0F
            size = 128 if precision else 64
            values = payload[pos + 1:pos + 1 + size]
            if table_id == 0 and precision == 0 and len(values) == 64:
                table = np.sort(np.frombuffer(values, dtype=np.uint8).astype(np.int64))
                for quality in range(1, 101):
                    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
                    ijg = np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)
                    if np.array_equal(np.sort(ijg), table):
                        return quality
                return None
            pos += 1 + size
    return None


@dataclass
class CompressedFrame:
    """A ``CompressedImage`` with the size read from its header bytes (0x0 when unreadable),
    so it pairs with ground truth like a raw image does."""

    header: Any
    format: str
    data: np.ndarray
    height: int
    width: int
    codec: str | None

    @classmethod
    def of(cls, msg: Any) -> CompressedFrame:
        data = np.asarray(msg.data, dtype=np.uint8)
        size = image_size(data[:65536].tobytes())
        codec, height, width = size if size else (None, 0, 0)
        return cls(msg.header, str(msg.format), data, height, width, codec)


def _format_parts(fmt: str) -> tuple[str | None, str | None]:
    """(codec, compressed channel order) from image_transport's format string."""
    text = fmt.strip().lower()
    if ";" not in text:
        return (text if text in ("jpeg", "png") else None), None
    _, compression = text.split(";", 1)
    words = compression.split()
    codec = words[0] if words and words[0] in ("jpeg", "png") else None
    order = words[2] if len(words) >= 3 and words[1] == "compressed" else None
    return codec, order


def frame_rgb(image: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of a bag frame's image, raw or compressed; :class:`ImageRejected` if unusable."""
    if not isinstance(image, CompressedFrame):
        return image_msg_to_rgb(image, max_pixels)
    codec, order = _format_parts(image.format)
    if codec is None and image.format.strip():
        raise ImageRejected("compressed_format", f"unsupported compressed format {image.format[:80]!r}; "
                                                 "expected JPEG or PNG")
    if image.codec is None:
        raise ImageRejected("undecodable", "compressed data is neither JPEG nor PNG (bad header bytes)")
    if image.height * image.width > max_pixels:
        raise ImageRejected("too_large", f"image {image.width}x{image.height} exceeds max_pixels={max_pixels}")
    decoded = cv2.imdecode(image.data, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageRejected("undecodable", f"OpenCV could not decode the {image.codec} data "
                                           f"({image.data.size} bytes; truncated?)")
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return np.repeat(decoded[:, :, None], 3, axis=2)
    decoded = decoded[:, :, :3]
    if order is not None and order.startswith("rgb"):  # the producer stored RGB bytes as they were
        return decoded
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def describe_input(image: Any) -> dict[str, Any]:
    """How a camera's images were recorded, for the report: raw encoding, or codec and quality."""
    if isinstance(image, CompressedFrame):
        quality = jpeg_quality(image.data[:65536].tobytes()) if image.codec == "jpeg" else None
        return {"transport": "compressed", "format": image.format[:80], "codec": image.codec,
                "jpeg_quality": quality}
    return {"transport": "raw", "encoding": str(image.encoding)[:40]}
