"""rosbag2 drives: camera images with ground-truth label images, written and read with ``rosbags``.

A *drive bag* has, per camera, two topics whose messages share header stamps and ``frame_id``: the
camera image and the ground truth (``sensor_msgs/msg/Image`` mono8 Cityscapes label ids, always
lossless). The image is a ``sensor_msgs/msg/Image`` (rgb8 when we write it; any encoding the node
accepts when we read) or, in a compressed bag, a ``sensor_msgs/msg/CompressedImage`` on
``<image topic>/compressed`` as image_transport's compressed plugin writes it.

Topic naming: camera ``<cam>`` records ``/<cam>/image_raw`` (or ``/<cam>/image_raw/compressed``)
and ``/<cam>/semantic_gt``. A single-camera bag uses the camera name ``camera``, i.e. the
historical ``/camera/image_raw`` and ``/camera/semantic_gt``; :func:`find_cameras` lists the
cameras of a bag by this convention. ``rosbags`` needs no ROS install; the bags it
writes are rosbag2 format version 9 (sqlite3 or mcap storage), the format ``ros2 bag`` writes on
Jazzy, so Jazzy and later can play them.

Drives without ground truth (what a car records; mining needs none) are read as images only:
:func:`find_cameras` with ``need_gt=False`` lists every ``/<cam>/image_raw[/compressed]`` and a
:class:`DriveBag` opened with ``gt_topic=None`` yields every image with ``gt=None``.

Reading pairs an image with the ground truth of the same header stamp, in the order the images
were recorded; when several images share a stamp, the k-th image of a stamp pairs with the k-th
ground truth of that stamp. Before reading, a census of every header stamp (read from the raw CDR
bytes, without decoding images) finds stamps whose images and ground truths cannot be paired
exactly (e.g. two images and one ground truth): their frames come out unpaired
(``ambiguous_stamp``) rather than evaluated on a guess. The census also notes when the bag's
metadata under-counts its messages. Problems are never skipped silently: a bag that cannot be read raises
:class:`BagError` naming the cause (and, for a missing topic, the topics it does have); a frame
whose ground truth is missing or unusable comes out with ``gt=None`` and a ``gt_problem`` reason
that the report counts.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.rosbag2.errors import ReaderError, WriterError
from rosbags.typesys import Stores, get_typestore

from ..compressed import is_compressed, jpeg_quality, message_size, probe
from ..image_conversion import ImageRejected

IMAGE_TOPIC = "/camera/image_raw"
GT_TOPIC = "/camera/semantic_gt"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
#: Image codecs a bag can be written with (``--compressed``).
CODECS = ("jpeg", "png")
DEFAULT_JPEG_QUALITY = 90
STORAGES = ("sqlite3", "mcap")
#: Ground-truth encodings we accept: one uint8 label id per pixel.
GT_ENCODINGS = ("mono8", "8UC1")
#: How many images may wait for their ground truth before they are given up on as unmatched.
#: Recorders write both topics within a few messages of each other; this bounds memory.
PAIRING_WINDOW = 64

#: ``sensor_msgs/msg/Image`` has had the same definition (and RIHS01 hash) since Humble.
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
_Image = TYPESTORE.types["sensor_msgs/msg/Image"]
_CompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
_Header = TYPESTORE.types["std_msgs/msg/Header"]
_Time = TYPESTORE.types["builtin_interfaces/msg/Time"]


class BagError(ValueError):
    """A bag that cannot be used for evaluation; the message says why."""


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def camera_topics(camera: str) -> tuple[str, str]:
    """(image topic, ground-truth topic) of a camera by the bag naming convention (module doc)."""
    return f"/{camera}/image_raw", f"/{camera}/semantic_gt"


def _header(stamp_ns: int, frame_id: str) -> Any:
    return _Header(stamp=_Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                   frame_id=frame_id)


def compressed_image_message(stamp_ns: int, frame_id: str, rgb: np.ndarray, codec: str,
                             jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> Any:
    """A ``rosbags`` CompressedImage of an RGB array, encoded as image_transport's plugin does.

    The plugin encodes with OpenCV in BGR order and names the original and the compressed
    encoding in ``format`` (``"rgb8; jpeg compressed bgr8"``), which is what readers parse.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    flags = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", bgr, flags)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return _CompressedImage(header=_header(stamp_ns, frame_id), format=f"rgb8; {codec} compressed bgr8",
                            data=data.reshape(-1))


def image_message(stamp_ns: int, frame_id: str, array: np.ndarray, encoding: str) -> Any:
    """A ``rosbags`` Image message wrapping a uint8 HxW or HxWx3 array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    channels = 1 if array.ndim == 2 else array.shape[2]
    return _Image(header=_header(stamp_ns, frame_id), height=array.shape[0], width=array.shape[1], encoding=encoding,
                  is_bigendian=0, step=array.shape[1] * channels, data=array.reshape(-1))


class DriveBagWriter:
    """Writes paired image / ground-truth frames of one or several cameras; a context manager.

    ``cameras`` None writes one camera on ``image_topic``/``gt_topic``; a list of names writes
    each camera on :func:`camera_topics`. ``compressed`` (``jpeg``/``png``) stores the images as
    CompressedImage on ``<image topic>/compressed``; ground truth always stays lossless mono8.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", image_topic: str = IMAGE_TOPIC,
                 gt_topic: str = GT_TOPIC, *, cameras: Sequence[str] | None = None,
                 compressed: str | None = None, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> None:
        self.path = Path(path)
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if compressed is not None and compressed not in CODECS:
            raise ValueError(f"compressed must be one of {', '.join(CODECS)}, got {compressed!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg quality must be in 1..100, got {jpeg_quality}")
        if cameras is not None:
            if not cameras or len(set(cameras)) != len(cameras):
                raise ValueError(f"cameras must be distinct names, got {list(cameras)!r}")
            self._topics = {name: camera_topics(name) for name in cameras}
        else:
            self._topics = {None: (image_topic, gt_topic)}
        self.compressed, self.jpeg_quality = compressed, int(jpeg_quality)
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        try:
            self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        except WriterError as exc:
            raise ValueError(f"cannot write bag: {exc}") from exc
        self._connections: dict[str | None, tuple[Any, Any]] = {}
        self.frames = 0

    def __enter__(self) -> DriveBagWriter:
        self._writer.open()
        for camera, (image_topic, gt_topic) in self._topics.items():
            if self.compressed:
                image_conn = self._writer.add_connection(f"{image_topic}/compressed", COMPRESSED_TYPE,
                                                         typestore=TYPESTORE)
            else:
                image_conn = self._writer.add_connection(image_topic, IMAGE_TYPE, typestore=TYPESTORE)
            gt_conn = self._writer.add_connection(gt_topic, IMAGE_TYPE, typestore=TYPESTORE)
            self._connections[camera] = (image_conn, gt_conn)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._writer.close()
        if exc_type is not None:  # a half-written bag would pass for a short drive; remove it
            shutil.rmtree(self.path, ignore_errors=True)

    def write(self, stamp_ns: int, frame_id: str, rgb: np.ndarray, label_ids: np.ndarray,
              camera: str | None = None) -> None:
        """One frame of ``camera`` (None: the single camera): image and mono8 label ids under the
        same header, logged at the stamp."""
        if rgb.shape[:2] != label_ids.shape:
            raise ValueError(f"image {rgb.shape[:2]} and ground truth {label_ids.shape} differ in size")
        if camera not in self._connections:
            raise ValueError(f"camera {camera!r} is not one of this bag's cameras "
                             f"{[c for c in self._connections if c is not None]}")
        image_conn, gt_conn = self._connections[camera]
        if self.compressed:
            image = compressed_image_message(stamp_ns, frame_id, rgb, self.compressed, self.jpeg_quality)
            image_type = COMPRESSED_TYPE
        else:
            image, image_type = image_message(stamp_ns, frame_id, rgb, "rgb8"), IMAGE_TYPE
        self._writer.write(image_conn, stamp_ns, TYPESTORE.serialize_cdr(image, image_type))
        gt = image_message(stamp_ns, frame_id, label_ids, "mono8")
        self._writer.write(gt_conn, stamp_ns, TYPESTORE.serialize_cdr(gt, IMAGE_TYPE))
        self.frames += 1


@dataclass
class BagFrame:
    """One camera frame and its ground truth, in recording order."""

    index: int
    stamp_ns: int
    frame_id: str
    #: The image message as recorded: a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``
    #: (``rosbags`` message; :func:`seg_perception.compressed.message_to_rgb` decodes either).
    image: Any
    #: HxW uint8 Cityscapes label ids, or None when unusable (see ``gt_problem``).
    gt: np.ndarray | None
    gt_problem: str | None = None


@dataclass
class BagInfo:
    path: str
    storage: str
    #: topic -> (message type, message count)
    topics: dict[str, tuple[str, int]]
    image_topic: str
    #: None: the bag was opened for its images only.
    gt_topic: str | None
    image_count: int
    gt_count: int
    duration_s: float
    #: ``raw`` (sensor_msgs/Image) or ``compressed`` (sensor_msgs/CompressedImage).
    image_transport: str = "raw"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "storage": self.storage, "image_topic": self.image_topic,
            "image_transport": self.image_transport,
            "gt_topic": self.gt_topic, "image_count": self.image_count, "gt_count": self.gt_count,
            "duration_s": self.duration_s,
            "topics": {t: {"type": ty, "count": n} for t, (ty, n) in self.topics.items()},
        }


@dataclass
class PairingStats:
    """What reading the bag could not pair, for the report."""

    gt_without_image: int = 0
    unreadable_images: int = 0
    notes: list[str] = field(default_factory=list)


def raw_header_stamp(raw: bytes) -> int:
    """The header stamp (ns) of a serialized message that starts with a ``std_msgs/Header``
    (Image, CompressedImage), read from its CDR bytes without decoding the rest."""
    little = raw[1] == 1  # encapsulation CDR_LE = 00 01, CDR_BE = 00 00
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class StampCensus:
    """How many images and ground truths the bag holds per header stamp."""

    images: Counter = field(default_factory=Counter)
    gts: Counter = field(default_factory=Counter)

    def ambiguous(self) -> set[int]:
        """Stamps where several images or ground truths meet unequal numbers of the other: any
        pairing there would be a guess."""
        return {s for s, n in self.images.items()
                if self.gts[s] and n != self.gts[s] and (n > 1 or self.gts[s] > 1)}


def _gt_array(msg: Any, image: Any) -> tuple[np.ndarray | None, str | None]:
    """Decode a ground-truth message, or give the reason it cannot be used for this image (whose
    size, for a compressed image, comes from its header bytes)."""
    if msg.encoding not in GT_ENCODINGS:
        return None, "gt_encoding"
    if (msg.height, msg.width) != message_size(image):
        return None, "gt_size_mismatch"
    data = np.asarray(msg.data, dtype=np.uint8)
    if msg.step < msg.width or data.size != msg.step * msg.height:
        return None, "gt_data_length"
    return data.reshape(msg.height, msg.step)[:, : msg.width], None


def _describe_topics(topics: dict[str, tuple[str, int]]) -> str:
    if not topics:
        return "the bag has no topics"
    return "topics in the bag: " + ", ".join(f"{t} ({ty}, {n} msgs)" for t, (ty, n) in sorted(topics.items()))


def _resolve_image_topic(image_topic: str, topics: dict[str, tuple[str, int]]) -> str:
    """The topic to read: ``image_topic``, or its ``/compressed`` sibling when only that exists."""
    compressed = f"{image_topic}/compressed"
    if image_topic not in topics and topics.get(compressed, ("",))[0] == COMPRESSED_TYPE:
        return compressed
    return image_topic


@dataclass(frozen=True)
class CameraTopics:
    """One camera of a drive bag: its name and the topics to read (``gt_topic`` None: images only)."""

    name: str
    image_topic: str
    gt_topic: str | None


def list_cameras(topics: dict[str, tuple[str, int]]) -> list[CameraTopics]:
    """Cameras by the naming convention: ``/<cam>/image_raw[/compressed]`` with ``/<cam>/semantic_gt``.

    Raw images are preferred when a camera has both (lossless); sorted by name.
    """
    cameras = []
    for topic, (msgtype, _) in sorted(topics.items()):
        if topic.endswith("/semantic_gt") and msgtype == IMAGE_TYPE:
            name = topic[1:-len("/semantic_gt")]
            image_topic = _resolve_image_topic(camera_topics(name)[0], topics)
            if image_topic in topics:
                cameras.append(CameraTopics(name, image_topic, topic))
    return cameras


def list_image_cameras(topics: dict[str, tuple[str, int]]) -> list[CameraTopics]:
    """Cameras by their images alone: every ``/<cam>/image_raw`` (``sensor_msgs/Image``) or
    ``/<cam>/image_raw/compressed`` (``sensor_msgs/CompressedImage``), raw preferred, sorted by name;
    ``gt_topic`` None (read for the images only)."""
    names = set()
    for topic, (msgtype, _) in topics.items():
        if (topic.endswith("/image_raw") and msgtype == IMAGE_TYPE) or \
                (topic.endswith("/image_raw/compressed") and msgtype == COMPRESSED_TYPE):
            names.add(camera_name(topic))
    cameras = []
    for name in sorted(names):
        raw = camera_topics(name)[0]
        image_topic = raw if topics.get(raw, ("",))[0] == IMAGE_TYPE else f"{raw}/compressed"
        cameras.append(CameraTopics(name, image_topic, None))
    return cameras


def find_cameras(path: str | Path, names: Sequence[str] | None = None, need_gt: bool = True) -> list[CameraTopics]:
    """The cameras of the bag at ``path`` (all, or the given ``names`` in that order): with ground
    truth (:func:`list_cameras`), or, ``need_gt=False``, every camera's images (:func:`list_image_cameras`).

    Raises :class:`BagError` naming the topics when the bag has no camera or lacks a named one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    try:
        with Reader(path) as reader:
            topics = {n: (i.msgtype or "(mixed types)", i.msgcount) for n, i in reader.topics.items()}
    except (ReaderError, sqlite3.Error, OSError, KeyError, ValueError) as exc:
        raise BagError(f"cannot open bag {path} (unreadable or not a rosbag2): {type(exc).__name__}: {exc}") from exc
    found = {c.name: c for c in (list_cameras(topics) if need_gt else list_image_cameras(topics))}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise BagError(f"bag {path} has no camera {', '.join(map(repr, missing))[:200]} (cameras: "
                           f"{', '.join(found) or 'none'}); {_describe_topics(topics)}"[:2000])
        return [found[n] for n in names]
    if not found:
        wanted = "/<cam>/image_raw with /<cam>/semantic_gt" if need_gt else "/<cam>/image_raw[/compressed]"
        raise BagError(f"bag {path} has no camera ({wanted}); {_describe_topics(topics)}"[:2000])
    return list(found.values())


def camera_name(image_topic: str) -> str:
    """The camera a topic belongs to by the naming convention (``/<cam>/image_raw[/compressed]``),
    else the topic itself without its leading slash."""
    topic = image_topic.removesuffix("/compressed")
    parts = topic.strip("/").split("/")
    return "/".join(parts[:-1]) if len(parts) > 1 and parts[-1] == "image_raw" else topic.strip("/")


def select_cameras(path: str | Path, names: Sequence[str] | None = None,
                   topics: tuple[str, str | None] | None = None, need_gt: bool = True) -> list[CameraTopics]:
    """The cameras to evaluate in the bag at ``path``: by ``names`` (None: every camera found by the
    naming convention, :func:`find_cameras`), or the one camera of explicit ``topics`` (image,
    ground truth or None), checked to exist (a missing one raises :class:`BagError` naming the topics
    the bag does have)."""
    if topics is None:
        return find_cameras(path, names, need_gt)
    if names:
        raise ValueError("name cameras (--cameras) or give one camera's topics (--image-topic/--gt-topic), not both")
    image_topic, gt_topic = topics
    with DriveBag(path, image_topic, gt_topic) as bag:
        image_topic = bag.image_topic
    return [CameraTopics(camera_name(image_topic), image_topic, gt_topic)]


class DriveBag:
    """A bag opened for evaluation. Use as a context manager; :meth:`frames` streams pairs
    (``gt_topic`` None: the images alone, each with ``gt=None``)."""

    def __init__(self, path: str | Path, image_topic: str = IMAGE_TOPIC, gt_topic: str | None = GT_TOPIC) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag not found: {self.path}")
        self.gt_topic = gt_topic
        self.pairing = PairingStats()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, sqlite3.Error, OSError, KeyError, ValueError) as exc:
            raise BagError(f"cannot open bag {self.path} (unreadable or not a rosbag2): "
                           f"{type(exc).__name__}: {exc}") from exc
        topics = {name: (info.msgtype or "(mixed types)", info.msgcount)
                  for name, info in self._reader.topics.items()}
        image_topic = _resolve_image_topic(image_topic, topics)
        self.image_topic = image_topic
        for topic, role in ((image_topic, "image"), (gt_topic, "ground-truth")):
            if topic is None:
                continue
            if topic not in topics:
                self._reader.close()
                raise BagError(f"bag {self.path} has no {role} topic {topic!r}; {_describe_topics(topics)}")
            allowed = (IMAGE_TYPE, COMPRESSED_TYPE) if role == "image" else (IMAGE_TYPE,)
            if topics[topic][0] not in allowed:
                self._reader.close()
                raise BagError(f"{role} topic {topic!r} has type {topics[topic][0]}; only "
                               f"{' or '.join(allowed)} is supported")
        storage = "mcap" if any(self.path.rglob("*.mcap")) or self.path.suffix == ".mcap" else "sqlite3"
        self.info = BagInfo(
            path=str(self.path), storage=storage, topics=topics, image_topic=image_topic,
            gt_topic=gt_topic, image_count=topics[image_topic][1],
            gt_count=topics[gt_topic][1] if gt_topic is not None else 0,
            duration_s=self._reader.duration / 1e9,
            image_transport="compressed" if topics[image_topic][0] == COMPRESSED_TYPE else "raw",
        )
        try:
            self.census = self._census()
        except BagError:
            self._reader.close()
            raise
        self.ambiguous_stamps = self.census.ambiguous()
        self._note_census()

    def __enter__(self) -> DriveBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    def _census(self) -> StampCensus:
        """Every image and ground-truth header stamp, from the raw bytes (no image decoding)."""
        census = StampCensus()
        connections = [c for c in self._reader.connections if c.topic in (self.image_topic, self.gt_topic)]
        read = 0
        try:
            for conn, _, raw in self._reader.messages(connections=connections):
                counter = census.images if conn.topic == self.image_topic else census.gts
                counter[raw_header_stamp(raw)] += 1
                read += 1
        except Exception as exc:  # any failure mid-read means a damaged bag
            raise BagError(f"bag {self.path} is truncated or corrupt: reading failed after {read} "
                           f"messages: {type(exc).__name__}: {exc}") from exc
        return census

    def _note_census(self) -> None:
        for topic, counted, listed in ((self.image_topic, self.census.images.total(), self.info.image_count),
                                       (self.gt_topic, self.census.gts.total(), self.info.gt_count)):
            if topic is not None and counted > listed:
                self.pairing.notes.append(f"the bag's metadata lists {listed} messages on {topic} but it holds "
                                          f"{counted}; all of them are read")
        if self.ambiguous_stamps:
            example = min(self.ambiguous_stamps)
            self.pairing.notes.append(
                f"{len(self.ambiguous_stamps)} header stamps carry unequal numbers of images and ground truths "
                f"(e.g. stamp {example}: {self.census.images[example]} images, {self.census.gts[example]} "
                f"ground truths); their frames are not evaluated (ambiguous_stamp) rather than paired by guess")

    def _messages(self) -> Iterator[tuple[str, Any]]:
        """(topic, decoded message) in log order; read failures become :class:`BagError`."""
        connections = [c for c in self._reader.connections if c.topic in (self.image_topic, self.gt_topic)]
        read = 0
        try:
            for conn, _, raw in self._reader.messages(connections=connections):
                msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                read += 1
                yield conn.topic, msg
        except BagError:
            raise
        except Exception as exc:  # any failure mid-read means a damaged bag
            raise BagError(f"bag {self.path} is truncated or corrupt: reading failed after {read} "
                           f"messages: {type(exc).__name__}: {exc}") from exc

    def frames(self) -> Iterator[BagFrame]:
        """Images in recording order, each with the ground truth of the same header stamp (the
        k-th image of a stamp with the k-th ground truth of that stamp)."""
        if self.gt_topic is None:
            yield from self._images_only()
            return
        images: OrderedDict[tuple[int, int], Any] = OrderedDict()  # (stamp, k) -> image
        gts: dict[tuple[int, int], Any] = {}
        seen: dict[str, Counter] = {self.image_topic: Counter(), self.gt_topic: Counter()}
        index = 0

        def emit(key: tuple[int, int], image: Any, gt_msg: Any | None,
                 problem: str = "missing_ground_truth") -> BagFrame:
            nonlocal index
            if gt_msg is None:
                gt = None
            else:
                gt, problem = _gt_array(gt_msg, image)
            frame = BagFrame(index, key[0], image.header.frame_id, image, gt, problem)
            index += 1
            return frame

        for topic, msg in self._messages():
            stamp = stamp_to_ns(msg.header.stamp)
            key = (stamp, seen[topic][stamp])
            seen[topic][stamp] += 1
            if stamp in self.ambiguous_stamps:
                if topic == self.image_topic:
                    yield emit(key, msg, None, "ambiguous_stamp")
                continue
            if topic == self.image_topic:
                images[key] = msg
            else:
                gts[key] = msg
            # Emit from the front in image order as soon as the oldest image is paired (or waited
            # for long enough), so memory stays bounded whatever the bag's length.
            while images:
                first = next(iter(images))
                if first in gts:
                    yield emit(first, images.pop(first), gts.pop(first))
                elif len(images) > PAIRING_WINDOW:
                    yield emit(first, images.pop(first), None)
                else:
                    break
            if len(gts) > PAIRING_WINDOW:  # ground truth whose image never came
                oldest = min(gts)
                if not images or oldest < next(iter(images)):
                    gts.pop(oldest)
                    self.pairing.gt_without_image += 1
        for key, image in images.items():
            yield emit(key, image, gts.pop(key, None))
        self.pairing.gt_without_image += len(gts)
        self._note_unread(index)

    def _images_only(self) -> Iterator[BagFrame]:
        index = 0
        for _, msg in self._messages():
            yield BagFrame(index, stamp_to_ns(msg.header.stamp), msg.header.frame_id, msg, None, "no_ground_truth")
            index += 1
        self._note_unread(index)

    def _note_unread(self, read: int) -> None:
        missing = self.info.image_count - read
        if missing > 0:
            self.pairing.unreadable_images = missing
            self.pairing.notes.append(
                f"the bag's metadata lists {self.info.image_count} images on {self.image_topic} but "
                f"only {read} could be read (truncated bag?)"
            )


def describe_input(image: Any) -> dict[str, Any]:
    """How a camera's images were recorded, for the report: raw encoding, or codec and the JPEG
    quality (from the quantisation tables, when it is a libjpeg quality)."""
    if not is_compressed(image):
        return {"transport": "raw", "encoding": str(image.encoding)[:40]}
    try:
        codec: str | None = probe(image.data).codec
    except ImageRejected:
        codec = None
    return {"transport": "compressed", "format": str(image.format)[:80], "codec": codec,
            "jpeg_quality": jpeg_quality(image.data) if codec == "jpeg" else None}
