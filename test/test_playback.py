"""Playing a recorded bag into the node, as ``ros2 bag play`` does: the messages' raw bytes with
their ORIGINAL (years old) stamps, on a reliable / volatile / keep-last-10 publisher, into the node
with the shipped config. Every frame gets labels, in wall-clock mode (the stamps are then off the
node clock: served, aged from arrival, WARN on /diagnostics) and with ``use_sim_time`` and a
``/clock`` publisher (the stamps are on the bag's clock and judged by it). Compressed cameras too.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import torch
import yaml
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from reliability_support import FakeEngine, NodeHarness
from rosbags.rosbag2 import Reader, Writer
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from seg_perception import frame_conversion
from seg_perception.compressed import decode_to_rgb
from seg_perception.diagnostics import WARN
from seg_perception.evaluation.bag_io import TYPESTORE, image_message
from seg_perception.image_conversion import ImageRejected
from seg_perception.node import SegmentationNode
from seg_perception.scheduler import Frame

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
#: ``ros2 bag play``'s default publisher QoS.
BAG_PLAY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                          history=HistoryPolicy.KEEP_LAST)
#: When the drive was recorded: 2020-09-13, far behind the node's clock.
RECORDED_NS = 1_600_000_000 * 1_000_000_000
FRAMES = 5
PERIOD_S = 0.3  # slower than the CPU segments a 64x128 frame, so every frame is served


def shipped_config(**overrides: object) -> dict[str, object]:
    values = yaml.safe_load((ROOT / "config" / "seg.yaml").read_text())["/**"]["ros__parameters"]
    # an empty list has no ROS type as an override; the node declares it (cameras: []) itself
    return {**{k: v for k, v in values.items() if v != []}, **overrides}


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (64, 128, 3), dtype=np.uint8) for _ in range(FRAMES)]


def write_bag(path: Path, compressed: bool) -> list[int]:
    """A bag of FRAMES camera frames stamped (and logged) at the recording time; their stamps."""
    stamps = [RECORDED_NS + i * 100_000_000 for i in range(FRAMES)]
    kind = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    with Writer(path, version=9) as writer:
        connection = writer.add_connection(topic, kind, typestore=TYPESTORE)
        for stamp, rgb in zip(stamps, _frames(), strict=True):
            msg = image_message(stamp, f"f{stamp}", rgb, "rgb8")
            if compressed:
                jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].reshape(-1)
                cls = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
                msg = cls(header=msg.header, format="rgb8; jpeg compressed bgr8", data=jpeg)
            writer.write(connection, stamp, TYPESTORE.serialize_cdr(msg, kind))
    return stamps


def raw_messages(path: Path) -> list[tuple[str, bytes]]:
    """(topic, serialized bytes) in log order: what ``ros2 bag play`` publishes."""
    with Reader(path) as reader:
        return [(c.topic, bytes(raw)) for c, _, raw in reader.messages()]


def play(harness: NodeHarness, messages: list[tuple[str, bytes]], msg_type: type,
         clock: object | None = None) -> None:
    """Publish the bag's raw messages at PERIOD_S (and the bag time on /clock, when given)."""
    publisher = harness.driver.create_publisher(msg_type, messages[0][0], BAG_PLAY_QOS)
    harness.wait_for(lambda: publisher.get_subscription_count() > 0, 10.0, "the node's subscription")
    for _, raw in messages:
        if clock is not None:
            clock(raw)
        publisher.publish(raw)
        time.sleep(PERIOD_S)


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_bag_with_original_stamps_gets_labels_with_the_shipped_config(tmp_path: Path, compressed: bool) -> None:
    stamps = write_bag(tmp_path / "drive", compressed)
    params = shipped_config(image_transport="compressed" if compressed else "raw", diagnostics_period=0.2)
    topic = "camera/image_raw/compressed" if compressed else "camera/image_raw"
    kind = CompressedImage if compressed else Image
    with NodeHarness(params=params, input_type=kind, input_topic=topic) as harness:  # the real engine
        assert harness.node.scheduler.engine.description["precision"] == "fp32"
        play(harness, raw_messages(tmp_path / "drive"), kind)
        harness.wait_for(lambda: len(harness.labels) == FRAMES, 60.0, "a label image per frame")
        books = harness.wait_settled()
        diagnostic = harness.next_diagnostic()
    assert sorted(r.stamp_ns for r in harness.labels) == stamps  # the original headers
    assert books["processed"] == FRAMES and books["dropped"] == {} and books["rejected"] == {}
    assert diagnostic.level == WARN
    assert "behind the node clock" in diagnostic.message and "use_sim_time:=true" in diagnostic.message
    assert diagnostic.values["latency_from"] == "arrival" and diagnostic.values["clock_mismatch"] == "behind"
    assert float(diagnostic.values["clock_offset_s"]) > 5 * 365 * 86400.0
    assert 0.0 <= float(diagnostic.values["end_to_end_ms_p50"]) < 10_000.0
    assert float(diagnostic.values["decode_ms_p50"]) >= 0.0


def test_bag_with_sim_time_is_judged_on_the_bag_clock(tmp_path: Path) -> None:
    stamps = write_bag(tmp_path / "drive", compressed=False)
    messages = raw_messages(tmp_path / "drive")
    params = shipped_config(diagnostics_period=0.2)
    with NodeHarness(params=params, engine_factory=FakeEngine) as harness:
        harness.node.set_parameters([Parameter("use_sim_time", value=True)])
        clock_pub = harness.driver.create_publisher(Clock, "/clock", 10)

        def publish_clock(ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
            clock_pub.publish(msg)

        def clock_for(raw: bytes) -> None:  # like `ros2 bag play --clock`: the bag's time
            stamp = stamps[[r for _, r in messages].index(raw)]
            publish_clock(stamp + 20_000_000)
            time.sleep(0.05)

        harness.wait_for(lambda: clock_pub.get_subscription_count() > 0, 10.0, "the node's /clock subscription")
        publish_clock(stamps[0])
        harness.wait_for(lambda: harness.node.get_clock().now().nanoseconds >= stamps[0], 10.0, "sim time")
        play(harness, messages, Image, clock=clock_for)
        harness.wait_for(lambda: len(harness.labels) == FRAMES, 30.0, "a label image per frame")
        diagnostic = harness.next_diagnostic()
        # A frame 2 s older than the bag clock is stale on that clock (and not a clock mismatch).
        late = image_message_bytes(stamps[-1] - 2_000_000_000 + 20_000_000, "late")
        harness.driver.create_publisher(Image, "/camera/image_raw", BAG_PLAY_QOS).publish(late)
        harness.wait_for(lambda: harness.node.scheduler.accounting.snapshot()["dropped"].get("stale") == 1,
                         10.0, "the late frame dropped as stale")
    assert sorted(r.stamp_ns for r in harness.labels) == stamps
    assert diagnostic.values["latency_from"] == "stamp" and "clock_mismatch" not in diagnostic.values
    assert 0.0 <= float(diagnostic.values["end_to_end_ms_p50"]) < 1_000.0


def image_message_bytes(stamp_ns: int, frame_id: str) -> bytes:
    msg = image_message(stamp_ns, frame_id, np.zeros((64, 128, 3), np.uint8), "rgb8")
    return bytes(TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def test_compressed_camera_bad_payloads_are_rejected_and_the_node_keeps_serving() -> None:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 77  # FakeEngine's labels are the red channel
    jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    sof = jpeg.index(b"\xff\xc0")
    huge = jpeg[:sof + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[sof + 9:]
    sent = [("rgb8; jpeg compressed bgr8", jpeg, "jpeg"), ("png", b"garbage!" * 10, "garbage"),
            ("jpeg", jpeg[: len(jpeg) // 2], "truncated"), ("tiff", jpeg, "unknown"), ("jpeg", huge, "huge"),
            ("bgr8; png compressed bgr8", png, "png")]
    with NodeHarness(params={"image_transport": "compressed"}, engine_factory=FakeEngine,
                     input_type=CompressedImage, input_topic="camera/image_raw/compressed") as harness:
        publisher = harness.publisher
        for fmt, data, frame_id in sent:
            msg = CompressedImage(format=fmt, data=data)
            msg.header.frame_id = frame_id
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
            publisher.publish(msg)
            time.sleep(0.1)
        jpeg_labels, png_labels = harness.wait_labels("jpeg"), harness.wait_labels("png")
        books = harness.wait_settled()
    assert abs(int(np.median(jpeg_labels.labels)) - 77) <= 2
    assert (png_labels.labels == 77).all()
    assert books["processed"] == 2
    assert books["rejected"] == {"corrupt": 2, "format": 1, "too_large": 1}


class CudaFakeEngine(FakeEngine):
    """A FakeEngine that says it runs on CUDA, so the node routes JPEGs to the GPU decoder."""

    device = torch.device("cuda")


def test_on_a_cuda_engine_jpegs_of_a_batch_go_to_nvjpeg_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_nvjpeg(payloads: list[tuple[str, object]], device: object, max_pixels: int) -> list[object]:
        calls.append([fmt for fmt, _ in payloads])
        assert str(device) == "cuda"
        results: list[object] = []
        for fmt, data in payloads:  # a CPU stand-in; like nvJPEG's wrapper it returns rejections
            try:
                results.append(decode_to_rgb(fmt, data, max_pixels))
            except ImageRejected as exc:
                results.append(exc)
        return results

    monkeypatch.setattr(frame_conversion, "decode_jpegs_cuda", fake_nvjpeg)
    rgb = np.full((8, 8, 3), 40, np.uint8)
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    messages = [CompressedImage(format="jpeg", data=jpeg), CompressedImage(format="png", data=png),
                CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg[:40]),
                CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpeg)]
    context = rclpy.Context()
    context.init()
    try:
        node = SegmentationNode(parameter_overrides=[Parameter("image_transport", value="compressed")],
                                context=context, engine_factory=CudaFakeEngine)
        frames = [Frame("", msg, 0, 0) for msg in messages]
        results = node.converter.convert_batch(frames)
        node.destroy_node()
    finally:
        context.try_shutdown()
    assert calls == [["jpeg", "rgb8; jpeg compressed bgr8", "rgb8; jpeg compressed bgr8"]]  # one batch
    assert [type(r).__name__ for r in results] == ["ndarray", "ndarray", "ImageRejected", "ndarray"]
    assert (results[1] == 40).all()  # the PNG went through the CPU


def test_image_transport_is_a_per_camera_choice() -> None:
    context = rclpy.Context()
    context.init()
    overrides = [Parameter("cameras", value=["front", "rear"]),
                 Parameter("front.image_topic", value="/cams/front/image"),
                 Parameter("front.image_transport", value="compressed"),
                 Parameter("rear.image_topic", value="/cams/rear/image")]
    try:
        node = SegmentationNode(parameter_overrides=overrides, context=context, engine_factory=FakeEngine)
        topics = {camera: io.subscription.topic_name for camera, io in node.camera_io.items()}
        types = {camera: io.subscription.msg_type for camera, io in node.camera_io.items()}
        clocks = set(map(id, node.scheduler.stamp_clocks.values()))
        node.destroy_node()
    finally:
        context.try_shutdown()
    assert topics == {"front": "/cams/front/image/compressed", "rear": "/cams/rear/image"}
    assert types == {"front": CompressedImage, "rear": Image}
    assert len(clocks) == 2  # each camera's stamps are judged on their own
