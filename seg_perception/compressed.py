"""Decode ``sensor_msgs/CompressedImage`` payloads (JPEG, PNG) to RGB, checking sizes first.

Most recorded drives and many cameras publish through image_transport's ``compressed`` plugin.
Its ``format`` field reads ``"<camera encoding>; <codec> compressed <encoded as>"``, e.g.
``"rgb8; jpeg compressed bgr8"`` or ``"mono16; png compressed mono16"``; other publishers write
just ``"jpeg"`` or ``"png"``. The codec is taken from there and must agree with the payload's
magic bytes.

Size before pixels: :func:`probe` reads the width and height from the JPEG frame header (SOFn
segment) or the PNG ``IHDR`` chunk, so a payload that would decode into more than ``max_pixels``
is refused before a single pixel buffer is allocated (a 30 KB JPEG can claim 65535 x 65535).

Decoders: JPEG on the CPU uses the fastest correct decoder installed, in the order measured by
``bench/decode.py`` (:data:`JPEG_DECODER_PREFERENCE`); all wrap libjpeg-turbo. A payload must end
with its codec's end marker, and simplejpeg (the first choice) runs in strict mode, so a
truncated or corrupt stream is an error rather than a grey half-image. Zero bytes after the end
marker are padding, not truncation: V4L2/UVC MJPEG drivers hand out whole buffers, and the
decoders are given the payload without them. On CUDA, :func:`decode_jpegs_cuda` decodes a batch
of JPEGs with nvJPEG through torchvision straight into device memory. PNG is decoded by OpenCV;
16-bit PNGs keep the most significant byte of each sample, as 16-bit raw images do
(:mod:`~seg_perception.image_conversion`). A format that says the codec was handed RGB bytes
(``"...; jpeg compressed rgb8"``) has its channels swapped back after decoding, as
image_transport's compressed subscriber does.

This is the one decoder of the package: the node, the evaluator and training all decode here, and
:func:`message_to_rgb` turns any image message (raw ``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage``, from rclpy or deserialized from a bag) into RGB.

Every bad payload raises :class:`~seg_perception.image_conversion.ImageRejected` with one of
:data:`COMPRESSED_REJECT_REASONS`; nothing here lets another exception type escape.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .image_conversion import DEFAULT_MAX_PIXELS, ImageRejected, _data_view, image_msg_to_rgb

#: Reasons a compressed payload is rejected, in check order.
COMPRESSED_REJECT_REASONS = ("format", "corrupt", "zero_size", "too_large", "decode")

CODECS = ("jpeg", "png")
#: CPU JPEG decoders, fastest first as measured by bench/decode.py (see bench/results/decode*.json).
JPEG_DECODER_PREFERENCE = ("simplejpeg", "turbojpeg", "opencv", "torchvision")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
#: JPEG start-of-frame markers (C0-CF except DHT C4, JPG C8, DAC CC) carry the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
#: What the decoders raise for bad data (OpenCV's errors are translated to ValueError; nvJPEG and
#: torchvision raise RuntimeError; PyTurboJPEG OSError).
DECODE_ERRORS = (ValueError, RuntimeError, OSError)
#: Longest format string echoed back in an error.
_ECHO = 80
#: The IJG (libjpeg) luminance quantisation table at quality 50, the base of its quality scale.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)


@dataclass(frozen=True)
class CompressedFormat:
    """A parsed ``format`` field."""

    codec: str
    #: The camera's encoding before compression (``rgb8``), when the format states it.
    source_encoding: str = ""
    #: What was handed to the codec (``bgr8``, ``mono16``), when the format states it.
    encoded_as: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """What the header bytes say about a payload."""

    codec: str
    height: int
    width: int
    channels: int
    bit_depth: int


def _reject(reason: str, message: str) -> ImageRejected:
    return ImageRejected(reason, message)


def parse_format(fmt: str) -> CompressedFormat:
    """Parse image_transport's ``format`` field (or a plain ``jpeg``/``png``).

    ``compressedDepth`` (depth-image transport) is refused: it is not a camera image.
    """
    if not isinstance(fmt, str):
        raise _reject("format", f"format must be a string, got {type(fmt).__name__}")
    text = fmt.strip().lower()
    shown = fmt[:_ECHO] + ("..." if len(fmt) > _ECHO else "")
    if "compresseddepth" in text:
        raise _reject("format", f"format {shown!r} is a compressedDepth image; only jpeg and png camera "
                                f"images are supported")
    head, sep, tail = text.partition(";")
    source, words = (head.strip(), tail.split()) if sep else ("", head.split())
    codec = {"jpg": "jpeg"}.get(words[0], words[0]) if words else ""
    if codec not in CODECS or len(words) > 3 or (len(words) > 1 and words[1] != "compressed"):
        raise _reject("format", f"unsupported compressed format {shown!r}; expected 'jpeg', 'png' or "
                                f"image_transport's '<encoding>; jpeg|png compressed <encoding>'")
    return CompressedFormat(codec, source, words[2] if len(words) > 2 else "")


def _jpeg_segments(view: memoryview) -> Iterator[tuple[int, int, int]]:
    """``(marker, offset, length)`` of the JPEG marker segments after SOI, in order, up to the end
    of the header bytes; ``offset`` is where the segment's length field starts and ``length`` its
    value (0 for markers without one). Stops after EOI or SOS (entropy-coded data follows) and
    never reads past the payload; a byte that is not a marker is ``corrupt``."""
    n, i = len(view), 2
    while i < n:
        if view[i] != 0xFF:
            raise _reject("corrupt", f"JPEG: expected a marker at byte {i}")
        while i < n and view[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return
        marker = view[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            yield marker, i, 0
            continue
        if marker in (0xD9, 0xDA):
            yield marker, i, 0
            return
        if i + 2 > n:
            return
        length = (view[i] << 8) | view[i + 1]
        if length < 2:
            raise _reject("corrupt", f"JPEG: segment length {length} at byte {i}")
        yield marker, i, length
        i += length


def _jpeg_header(view: memoryview) -> ImageInfo:
    """The frame header (SOFn) of a JPEG: its size, components and precision."""
    n = len(view)
    for marker, i, _ in _jpeg_segments(view):
        if marker in (0xD9, 0xDA):
            raise _reject("corrupt", "JPEG: no frame header before the image data")
        if marker in _JPEG_SOF:
            if i + 8 > n:
                break
            precision = view[i + 2]
            height = (view[i + 3] << 8) | view[i + 4]
            width = (view[i + 5] << 8) | view[i + 6]
            return ImageInfo("jpeg", height, width, view[i + 7], precision)
    raise _reject("corrupt", "JPEG: truncated before the frame header")


def jpeg_quality(data: Any) -> int | None:
    """The libjpeg quality setting a JPEG was written with, when its luminance quantisation table
    is exactly IJG's at some quality (OpenCV, libjpeg-turbo, image_transport); None otherwise.
    Reads the header bytes only; for the evaluation report ("JPEG quality 80")."""
    view = _data_view(data)
    if bytes(view[:3]) != b"\xff\xd8\xff":
        return None
    try:
        for marker, i, length in _jpeg_segments(view):
            if marker != 0xDB:
                continue
            table = _luminance_table(bytes(view[i + 2:i + length]))
            if table is not None:
                return _ijg_quality(table)
    except ImageRejected:
        return None
    return None


def _luminance_table(payload: bytes) -> np.ndarray | None:
    """The 8-bit table 0 of a DQT segment's payload, if it holds one."""
    pos = 0
    while pos < len(payload):
        precision, table_id = payload[pos] >> 4, payload[pos] & 0x0F
        size = 128 if precision else 64
        values = payload[pos + 1:pos + 1 + size]
        if table_id == 0 and precision == 0 and len(values) == 64:
            return np.frombuffer(values, dtype=np.uint8).astype(np.int64)
        pos += 1 + size
    return None


def _ijg_quality(table: np.ndarray) -> int | None:
    ordered = np.sort(table)  # the zig-zag order does not matter for the comparison
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        if np.array_equal(np.sort(np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)), ordered):
            return quality
    return None


def _png_header(view: memoryview) -> ImageInfo:
    if len(view) < 33 or bytes(view[12:16]) != b"IHDR":
        raise _reject("corrupt", "PNG: missing or truncated IHDR chunk")
    header = bytes(view[16:26])
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    bit_depth, color_type = header[8], header[9]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type)
    if channels is None or bit_depth not in (1, 2, 4, 8, 16):
        raise _reject("corrupt", f"PNG: invalid colour type {color_type} / bit depth {bit_depth}")
    return ImageInfo("png", height, width, channels, bit_depth)


def probe(data: Any) -> ImageInfo:
    """Codec and size of a JPEG or PNG payload, from its header bytes only."""
    view = _data_view(data)
    if bytes(view[:8]) == _PNG_SIGNATURE:
        return _png_header(view)
    if bytes(view[:3]) == b"\xff\xd8\xff":
        return _jpeg_header(view)
    return _unknown_payload(view)


def _unknown_payload(view: memoryview) -> ImageInfo:
    kind = "empty" if len(view) == 0 else f"starts with {bytes(view[:8]).hex()}"
    raise _reject("corrupt", f"payload is neither JPEG nor PNG ({len(view)} bytes, {kind})")


def _content_end(view: memoryview) -> int:
    """Length of the payload without its trailing zero bytes (the padding of a driver's buffer),
    found from the end in growing steps so a short tail costs little."""
    array = np.frombuffer(view, np.uint8)
    end, step = len(array), 64
    while end > 0:
        start = max(0, end - step)
        nonzero = np.flatnonzero(array[start:end])
        if nonzero.size:
            return start + int(nonzero[-1]) + 1
        end, step = start, min(step * 4, 1 << 20)
    return 0


def _checked(fmt: str, data: Any, max_pixels: int) -> tuple[ImageInfo, CompressedFormat, memoryview]:
    """:func:`check_compressed`, also returning the parsed format and the payload without padding.

    A payload must end with its codec's end marker once trailing zero bytes are set aside: a cheap
    truncation test that does not depend on how strict a decoder is (neither marker ends in 0x00,
    so padding never hides one)."""
    declared = parse_format(fmt)
    view = _data_view(data)
    info = probe(view)
    if info.codec != declared.codec:
        raise _reject("format", f"format says {declared.codec} but the payload is {info.codec}")
    if info.height <= 0 or info.width <= 0:
        raise _reject("zero_size", f"{info.codec} image has zero size ({info.width}x{info.height})")
    if info.width * info.height > max_pixels:
        raise _reject("too_large", f"{info.codec} image {info.width}x{info.height} exceeds max_pixels={max_pixels}")
    content = view[:_content_end(view)]
    if not bytes(content[-8:]).endswith(b"\xff\xd9" if info.codec == "jpeg" else _PNG_IEND):
        raise _reject("corrupt", f"{info.codec} payload is truncated (no end marker)")
    return info, declared, content


def check_compressed(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Validate a compressed message without decoding it; raises :class:`ImageRejected` with
    one of :data:`COMPRESSED_REJECT_REASONS`."""
    return _checked(fmt, data, max_pixels)[0]


def _channels_swapped(declared: CompressedFormat) -> bool:
    """Whether the codec was handed RGB bytes as if they were BGR (``... compressed rgb8``), so
    the decoded channels come out reversed; image_transport's subscriber swaps them back too."""
    return declared.encoded_as.startswith("rgb")


# -- CPU decoders --------------------------------------------------------------------------------
def _simplejpeg() -> Callable[[memoryview], np.ndarray]:
    import simplejpeg

    return lambda view: simplejpeg.decode_jpeg(view, colorspace="RGB", strict=True)


def _turbojpeg() -> Callable[[memoryview], np.ndarray]:
    from turbojpeg import TJPF_RGB, TurboJPEG

    codec = TurboJPEG()  # raises when libjpeg-turbo's shared library is missing or too old
    return lambda view: codec.decode(bytes(view), pixel_format=TJPF_RGB)


def _opencv() -> Callable[[memoryview], np.ndarray]:
    import cv2

    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION

    def decode(view: memoryview) -> np.ndarray:
        try:
            image = cv2.imdecode(np.frombuffer(view, np.uint8), flags)
        except cv2.error as exc:
            raise ValueError(str(exc)) from exc
        if image is None:
            raise ValueError("OpenCV could not decode the payload")
        return image

    return decode


def _torchvision() -> Callable[[memoryview], np.ndarray]:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(view: memoryview) -> np.ndarray:
        return decode_jpeg(_as_tensor(view), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    return decode


_JPEG_FACTORIES: dict[str, Callable[[], Callable[[memoryview], np.ndarray]]] = {
    "simplejpeg": _simplejpeg, "turbojpeg": _turbojpeg, "opencv": _opencv, "torchvision": _torchvision,
}


def available_jpeg_decoders() -> dict[str, Callable[[memoryview], np.ndarray]]:
    """Every CPU JPEG decoder that imports and initialises here, in preference order."""
    found = {}
    for name in JPEG_DECODER_PREFERENCE:
        try:
            found[name] = _JPEG_FACTORIES[name]()
        except (ImportError, OSError, RuntimeError):  # module or shared library missing or too old
            continue
    return found


_jpeg_decoder: tuple[str, Callable[[memoryview], np.ndarray]] | None = None


def jpeg_decoder() -> tuple[str, Callable[[memoryview], np.ndarray]]:
    """The CPU JPEG decoder in use: (name, function), chosen once on first use."""
    global _jpeg_decoder
    if _jpeg_decoder is None:
        decoders = available_jpeg_decoders()
        if not decoders:
            raise RuntimeError("no JPEG decoder available: install simplejpeg or opencv-python-headless")
        _jpeg_decoder = next(iter(decoders.items()))
    return _jpeg_decoder


def _png_to_rgb(view: memoryview) -> np.ndarray:
    import cv2

    try:
        image = cv2.imdecode(np.frombuffer(view, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise ValueError(str(exc)) from exc
    if image is None:
        raise ValueError("OpenCV could not decode the PNG payload")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # the most significant byte, as for 16-bit raw images
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) -> RGB


def decode_to_rgb(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check and decode a compressed payload on the CPU to an ``HxWx3`` uint8 RGB array."""
    info, declared, view = _checked(fmt, data, max_pixels)
    try:
        if info.codec == "png":
            rgb = _png_to_rgb(view)
        else:
            rgb = jpeg_decoder()[1](view)
            if rgb.ndim == 2:
                rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    except DECODE_ERRORS as exc:
        raise _reject("decode", f"{info.codec} decode failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    rgb = _checked_shape(rgb, info)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if _channels_swapped(declared) else rgb


def _checked_shape(rgb: Any, info: ImageInfo) -> Any:
    if tuple(rgb.shape) != (info.height, info.width, 3):
        raise _reject("decode", f"{info.codec} decoded to shape {tuple(rgb.shape)}, header says "
                                f"{info.height}x{info.width}")
    return rgb


# -- any image message ---------------------------------------------------------------------------
def is_compressed(msg: Any) -> bool:
    """Whether ``msg`` has the fields of ``sensor_msgs/CompressedImage`` (``format``, no
    ``encoding``): rclpy messages and ones deserialized from a bag alike."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image message -> ``HxWx3`` uint8 RGB, checked first: a raw ``sensor_msgs/Image`` through
    :func:`~seg_perception.image_conversion.image_msg_to_rgb`, a ``CompressedImage`` through
    :func:`decode_to_rgb`. Raises :class:`ImageRejected` with the node's reasons."""
    if is_compressed(msg):
        return decode_to_rgb(msg.format, msg.data, max_pixels)
    return image_msg_to_rgb(msg, max_pixels)


def message_size(msg: Any) -> tuple[int, int]:
    """``(height, width)`` of any image message without decoding it: the fields of a raw image,
    the header bytes of a compressed one; ``(0, 0)`` when those are unreadable."""
    if not is_compressed(msg):
        return int(msg.height), int(msg.width)
    try:
        info = probe(msg.data)
    except (ImageRejected, TypeError, ValueError):
        return 0, 0
    return info.height, info.width


# -- CUDA ----------------------------------------------------------------------------------------
def _as_tensor(view: memoryview) -> Any:
    import torch

    with warnings.catch_warnings():  # decoders only read their input
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.frombuffer(view, np.uint8))


def decode_jpegs_cuda(
    payloads: Sequence[tuple[str, Any]], device: Any = "cuda", max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Any]:
    """Decode ``(format, data)`` JPEG payloads with nvJPEG in one batch.

    Returns one entry per payload, in order: an ``HxWx3`` uint8 RGB tensor on ``device``, or the
    :class:`ImageRejected` that payload earned; one bad payload never costs the others their
    frame (a failed batch is retried one payload at a time). The current CUDA stream is
    synchronised before returning, so the tensors can be read from any stream.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    results: list[Any] = [None] * len(payloads)
    batch: list[int] = []
    checked: dict[int, tuple[ImageInfo, CompressedFormat, memoryview]] = {}
    for index, (fmt, data) in enumerate(payloads):
        try:
            checked[index] = _checked(fmt, data, max_pixels)
        except ImageRejected as exc:
            results[index] = exc
            continue
        if checked[index][0].codec != "jpeg":
            results[index] = _reject("format", "only JPEG decodes on the GPU; decode PNG with decode_to_rgb")
            continue
        batch.append(index)
    tensors = [_as_tensor(checked[i][2]) for i in batch]

    def finish(image: Any, index: int) -> Any:
        """CHW device tensor -> HWC RGB, checked against the header; or the rejection."""
        info, declared, _ = checked[index]
        try:
            rgb = _checked_shape(image.permute(1, 2, 0), info)
        except ImageRejected as exc:
            return exc
        return rgb.flip(2) if _channels_swapped(declared) else rgb

    def one(tensor: Any, index: int) -> Any:
        try:
            image = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
        except DECODE_ERRORS as exc:
            return _reject("decode", f"jpeg GPU decode failed: {type(exc).__name__}: {str(exc)[:200]}")
        return finish(image, index)

    if tensors:
        try:
            images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
            for index, image in zip(batch, images, strict=True):
                results[index] = finish(image, index)
        except DECODE_ERRORS:  # find the culprit: decode one by one
            for index, tensor in zip(batch, tensors, strict=True):
                results[index] = one(tensor, index)
        torch.cuda.current_stream(device).synchronize()
    return results
