"""Camera messages to RGB arrays, without ROS: the node's checks at arrival and the worker's
conversion, including the choice between the GPU and the CPU JPEG decoder.

A message is anything with the fields of ``sensor_msgs/Image`` (``encoding``, ``height``, ...) or
of ``sensor_msgs/CompressedImage`` (``format``, ``data``); the node hands in the received
messages, tests hand in the message classes or look-alikes. The work itself is done by
:mod:`~seg_perception.image_conversion` (raw) and :mod:`~seg_perception.compressed` (JPEG/PNG);
this module only decides which runs where:

* at arrival (:meth:`FrameConverter.check`) only the fields and header bytes are checked, without
  allocating, so a frame that is superseded before the worker takes it costs nothing;
* in the worker (:meth:`FrameConverter.convert_batch`), when the serving engine runs on CUDA the
  JPEGs of a batch are decoded by nvJPEG in one call straight into GPU memory; everything else
  is converted on the CPU, one frame at a time. Raw frames go through cv_bridge when a ROS
  install provides it (after our checks: cv_bridge trusts the header fields), else through our
  zero-copy conversion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .compressed import check_compressed, decode_jpegs_cuda, decode_to_rgb
from .image_conversion import check_image, image_msg_to_rgb
from .scheduler import Frame

try:  # A ROS install provides cv_bridge; the PyPI wheels do not.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    CvBridge = None


def is_compressed(msg: Any) -> bool:
    """True for a ``sensor_msgs/CompressedImage`` (it has ``format``; an ``Image`` has ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


class FrameConverter:
    """Checks and converts camera messages for the node's subscriptions and the scheduler's worker.

    ``max_pixels()`` and ``device()`` are read per call, so a runtime ``max_pixels`` change and a
    model swap onto another device apply to the next frame. ``device()`` is the serving engine's
    ``torch.device`` (None when no engine serves); ``log(level, message)`` reports a GPU decoder
    that is not available (the frames are then decoded on the CPU).
    """

    def __init__(self, max_pixels: Callable[[], int], device: Callable[[], Any],
                 log: Callable[[int, str], None]) -> None:
        self.max_pixels, self.device, self.log = max_pixels, device, log
        self._bridge: Any = None

    def check(self, msg: Any) -> None:
        """Raise :class:`~seg_perception.image_conversion.ImageRejected` when ``msg`` cannot be a
        frame we serve (size against ``max_pixels``, encoding/format, truncation), without
        decoding or allocating."""
        if is_compressed(msg):
            check_compressed(msg.format, msg.data, self.max_pixels())
        else:
            check_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
                        self.max_pixels())

    def convert(self, frame: Frame) -> np.ndarray:
        """A frame's message as a uint8 HxWx3 RGB array (called by the worker)."""
        msg = frame.payload
        max_pixels = self.max_pixels()
        if is_compressed(msg):
            return decode_to_rgb(msg.format, msg.data, max_pixels)
        if CvBridge is None:
            return image_msg_to_rgb(msg, max_pixels)
        check_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian, max_pixels)
        if self._bridge is None:
            self._bridge = CvBridge()
        return self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")

    def convert_batch(self, frames: list[Frame]) -> list[Any]:
        """The worker's conversion of a batch: one entry per frame, its image or the exception
        that rejects or fails it (that frame only)."""
        results: list[Any] = [None] * len(frames)
        device = self.device()
        if getattr(device, "type", None) == "cuda":
            jpegs = [i for i, f in enumerate(frames)
                     if is_compressed(f.payload) and "jpeg" in f.payload.format.lower()]
            if jpegs:
                payloads = [(frames[i].payload.format, frames[i].payload.data) for i in jpegs]
                try:
                    decoded = decode_jpegs_cuda(payloads, device=device, max_pixels=self.max_pixels())
                except (ImportError, RuntimeError) as exc:  # no nvJPEG here: the CPU decodes them
                    self.log(logging.WARNING, f"GPU JPEG decode unavailable, decoding on the CPU: {exc!r}"[:300])
                    decoded = [None] * len(jpegs)
                for i, image in zip(jpegs, decoded, strict=True):
                    results[i] = image
        for i, frame in enumerate(frames):
            if results[i] is None:
                try:
                    results[i] = self.convert(frame)
                except Exception as exc:  # handed back: it fails or rejects this frame only
                    results[i] = exc
        return results
