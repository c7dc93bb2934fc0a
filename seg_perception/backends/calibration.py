"""Calibration data for INT8: frames like the camera's, read from what users already have.

``calibration`` names one of three kinds of data (:func:`calibration_kind`):

* a **drive bag** (a rosbag2 folder): every camera image topic, ``sensor_msgs/Image`` or
  ``sensor_msgs/CompressedImage`` (ground-truth ``*/semantic_gt`` topics are not cameras), decoded
  by the node's own :func:`~seg_perception.compressed.message_to_rgb`;
* a **Cityscapes folder** (``ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png``; no labels needed);
* a **folder of images** (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.ppm``, sub-folders included).

:func:`read_calibration` takes ``frames`` calibration frames spread evenly over the data (a drive's
start, middle and end, not its first second) plus a few frames between them that the quantizer
never sees: the parity gate's held-out frames. Data that is missing, empty, unreadable or of the
wrong kind raises one :class:`CalibrationError` saying which and why; file contents are never
echoed.

The frames' digest (SHA-256 of every frame used, in order, with its size) keys the quantized
model in the cache: other calibration data, or other frames of the same data, is a rebuild.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..text import bounded, bounded_repr

#: The kinds of calibration data, as :func:`calibration_kind` names them.
KINDS = ("bag", "cityscapes", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
CITYSCAPES_SUFFIX = "_leftImg8bit.png"
#: Frames held out of the calibration for the parity gate (fewer when the data is short).
HOLDOUT_FRAMES = 4
#: ROS message types of camera images in a bag (the node's raw and compressed inputs).
CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
#: Most files looked at in a folder (a folder of millions of files is listed no further).
MAX_LISTED_FILES = 1_000_000


class CalibrationError(ValueError):
    """Calibration data that cannot be used: missing, empty, unreadable or of the wrong kind."""


@dataclass(frozen=True)
class CalibrationData:
    """Frames read from calibration data: those the quantizer measures and the held-out ones."""

    path: str
    kind: str
    #: uint8 HxWx3 RGB frames the quantizer runs (at most ``max_pixels`` each, aspect kept).
    calibration: tuple[np.ndarray, ...]
    #: uint8 RGB frames between them, never calibrated on: the parity gate's frames.
    holdout: tuple[np.ndarray, ...]
    #: How many frames the data holds.
    available: int
    #: SHA-256 over every frame used (size and pixels, in order): the cache key's part.
    digest: str

    def describe(self) -> str:
        return (f"{len(self.calibration)} of {self.available} frames of {self.kind} {bounded(self.path, 200)} "
                f"(+{len(self.holdout)} held out), sha256 {self.digest[:12]}")


def _error(path: str | os.PathLike[str], why: str) -> CalibrationError:
    return CalibrationError(bounded(f"calibration {bounded_repr(str(path), 200)} {why}", 1000))


def calibration_kind(path: str | os.PathLike[str]) -> str:
    """``bag``, ``cityscapes`` or ``images`` for the data at ``path``; :class:`CalibrationError`
    when it does not exist or is none of them (a file, an empty folder, a folder without images)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise _error(path, "does not exist; give a drive bag folder, a Cityscapes folder or a folder of images")
    if not folder.is_dir():
        raise _error(path, "is a file; give a drive bag folder (with metadata.yaml), a Cityscapes folder "
                           "(with leftImg8bit/) or a folder of images")
    if (folder / "metadata.yaml").is_file():
        return "bag"
    if (folder / "leftImg8bit").is_dir():
        return "cityscapes"
    if next(_image_files(folder), None) is not None:
        return "images"
    raise _error(path, f"is not a drive bag (no metadata.yaml), a Cityscapes folder (no leftImg8bit/) or a "
                       f"folder of images (no {'/'.join(IMAGE_SUFFIXES)} files)")


def spread(available: int, frames: int, holdout: int = HOLDOUT_FRAMES) -> tuple[list[int], list[int]]:
    """(calibration indices, held-out indices) into ``available`` frames: ``frames`` (or as many
    as there are) spread evenly over the whole data, and up to ``holdout`` frames half-way between
    calibration frames. Short data keeps most frames for calibration: with fewer than
    ``frames + holdout`` frames, a quarter (at least one, when there are two) is held out."""
    if available <= 0:
        return [], []
    if available >= frames + holdout:
        held = holdout
    else:
        held = min(holdout, max(1, available // 4)) if available >= 2 else 0
    count = min(frames, available - held)
    calibration = _evenly(available, count)
    taken = set(calibration)
    gaps = [(a + b) // 2 for a, b in zip(calibration, [*calibration[1:], available], strict=True)]
    candidates = [g for g in gaps if g not in taken] + [i for i in range(available) if i not in taken]
    picks = list(dict.fromkeys(candidates))
    chosen = sorted(picks[int(j * len(picks) / held)] for j in range(held)) if held and picks else []
    return calibration, chosen


def _evenly(available: int, count: int) -> list[int]:
    if count <= 0:
        return []
    return sorted({int((i + 0.5) * available / count) for i in range(count)})


def read_calibration(path: str | os.PathLike[str], frames: int, holdout: int = HOLDOUT_FRAMES,
                     max_pixels: int = 1024 * 2048) -> CalibrationData:
    """Read ``frames`` calibration frames and up to ``holdout`` held-out frames from ``path``
    (see the module docstring). Frames larger than ``max_pixels`` are scaled down (aspect kept),
    as the engine would run them. Raises :class:`CalibrationError`."""
    if frames < 1:
        raise CalibrationError(f"calibration_frames must be >= 1, got {frames}")
    kind = calibration_kind(path)
    reader = _BagFrames(path) if kind == "bag" else _FileFrames(path, kind)
    available = reader.count()
    if available == 0:
        raise _error(path, f"is an empty {kind}: it holds no {'camera image' if kind == 'bag' else 'image'}")
    calibration_idx, holdout_idx = spread(available, frames, holdout)
    wanted = sorted(set(calibration_idx) | set(holdout_idx))
    digest = hashlib.sha256(kind.encode())
    decoded: dict[int, np.ndarray] = {}
    for index, rgb in reader.read(wanted):
        digest.update(f"{index}:{rgb.shape}".encode())
        digest.update(np.ascontiguousarray(rgb).data)
        decoded[index] = _fit(rgb, max_pixels)
    missing = [i for i in wanted if i not in decoded]
    if missing:  # the metadata promised more messages than the bag holds
        raise _error(path, f"holds fewer frames than its metadata lists ({available}); truncated?")
    return CalibrationData(str(path), kind, tuple(decoded[i] for i in calibration_idx),
                           tuple(decoded[i] for i in holdout_idx), available, digest.hexdigest())


def _fit(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """``rgb`` scaled down (area interpolation) to at most ``max_pixels``, aspect kept."""
    import cv2

    height, width = rgb.shape[:2]
    if height * width <= max_pixels:
        return np.ascontiguousarray(rgb)
    scale = (max_pixels / (height * width)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)


def _image_files(folder: Path) -> Iterator[Path]:
    for count, item in enumerate(sorted(folder.rglob("*"))):
        if count >= MAX_LISTED_FILES:
            return
        if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file():
            yield item


class _FileFrames:
    """Image files of a Cityscapes folder or of a folder of images, in path order."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        self.path = path
        root = Path(path).expanduser()
        if kind == "cityscapes":
            files = (p for p in _image_files(root / "leftImg8bit") if p.name.endswith(CITYSCAPES_SUFFIX))
        else:
            files = _image_files(root)
        self.files = list(files)

    def count(self) -> int:
        return len(self.files)

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        for index in indices:
            file = self.files[index]
            try:
                bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            except cv2.error:
                bgr = None
            if bgr is None or bgr.ndim != 3 or bgr.size == 0:
                raise _error(self.path, f"has an image that cannot be read: {bounded_repr(file.name, 120)} "
                                        "(not an image, or damaged)")
            yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class _BagFrames:
    """Camera images of a rosbag2 drive: every Image/CompressedImage topic that is not ground truth."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from rosbags.rosbag2 import Reader

        self.path = path
        try:
            self._reader = Reader(Path(path).expanduser())
            self._reader.open()
        except Exception as exc:  # rosbags raises many types for a damaged or foreign folder
            raise _error(path, f"is not a readable rosbag2 bag ({type(exc).__name__})") from None
        self.connections = [c for c in self._reader.connections
                            if c.msgtype in CAMERA_TYPES and not c.topic.endswith("/semantic_gt")]
        if not self.connections:
            topics = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in self._reader.connections})) or "none"
            self._reader.close()
            raise _error(path, f"has no camera image topic (sensor_msgs/Image or CompressedImage); topics: "
                               f"{bounded(topics, 300)}")

    def count(self) -> int:
        return sum(int(c.msgcount) for c in self.connections)

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        from rosbags.typesys import Stores, get_typestore

        from ..compressed import message_to_rgb
        from ..image_conversion import ImageRejected

        typestore = get_typestore(Stores.ROS2_JAZZY)  # Image/CompressedImage: one definition since Humble

        wanted = set(indices)
        last = max(wanted, default=-1)
        try:
            for index, (connection, _, raw) in enumerate(self._reader.messages(connections=self.connections)):
                if index > last:
                    break
                if index not in wanted:
                    continue
                message: Any = typestore.deserialize_cdr(raw, connection.msgtype)
                try:
                    yield index, np.array(message_to_rgb(message), copy=True)
                except ImageRejected as exc:
                    raise _error(self.path, f"has a frame on {bounded_repr(connection.topic, 80)} that cannot be "
                                            f"decoded ({exc.reason}: {bounded(exc, 200)})") from None
        except CalibrationError:
            raise
        except (sqlite3.Error, OSError, KeyError, ValueError, AssertionError) as exc:
            raise _error(self.path, f"is truncated or damaged ({type(exc).__name__})") from None
        finally:
            self._reader.close()
