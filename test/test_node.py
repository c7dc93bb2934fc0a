"""seg_node over real DDS (loopback): encodings, headers, optional outputs, diagnostics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.cityscapes import PALETTE
from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def node(ros: RosHarness, weights: str) -> SegmentationNode:
    node = ros.add(SegmentationNode, device="cpu", precision="fp32", weights=weights,
                   diagnostics_period=0.3, max_age_ms=0.0)
    yield node
    ros.remove(node)


@pytest.fixture(scope="module")
def io(ros: RosHarness, node: SegmentationNode):  # the node must exist first
    names = ("labels", "color", "overlay", "confidence")
    outputs = {name: ros.collect(Image, f"segmentation/{name}") for name in names}
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    publisher = ros.publisher("camera/image_raw")
    assert wait_for(lambda: publisher.get_subscription_count() > 0)
    assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
    return publisher, outputs, diagnostics


_stamp_counter = iter(range(1, 1_000_000))


def _send(io, msg: Image, timeout: float = 15.0) -> Image:
    """Publish one frame and return the labels message with its stamp."""
    publisher, outputs, _ = io
    publisher.publish(msg)
    def match() -> list:
        return [m for m in outputs["labels"] if m.header.stamp == msg.header.stamp]

    assert wait_for(lambda: bool(match()), timeout), f"no labels for {msg.encoding} {msg.width}x{msg.height}"
    return match()[0]


def _stamp() -> Time:
    return Time(sec=1_700_000_000, nanosec=next(_stamp_counter))


def _rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encoding, size, pad",
    [("rgb8", (40, 56), 0), ("bgr8", (40, 56), 0), ("rgba8", (33, 47), 0), ("bgra8", (40, 56), 4),
     ("mono8", (24, 80), 0), ("rgb8", (64, 96), 6)],
)
def test_labels_for_each_encoding_and_size(io, reference_engine, encoding, size, pad) -> None:
    rgb = _rgb(*size, seed=size[0])
    if encoding == "mono8":
        rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
    msg = make_image(rgb, encoding, _stamp(), f"cam_{encoding}", pad=pad)
    labels = _send(io, msg)
    assert labels.header.frame_id == f"cam_{encoding}"
    assert labels.header.stamp == msg.header.stamp
    assert (labels.height, labels.width, labels.encoding, labels.step) == (*size, "mono8", size[1])
    got = np.frombuffer(bytes(labels.data), np.uint8).reshape(size)
    assert np.array_equal(got, reference_engine.infer(rgb).labels)


def test_color_and_overlay_only_when_enabled(io, node) -> None:
    _, outputs, _ = io
    before = {k: len(v) for k, v in outputs.items()}
    _send(io, make_image(_rgb(32, 48, 1), "rgb8", _stamp(), "cam"))
    assert len(outputs["color"]) == before["color"] and len(outputs["overlay"]) == before["overlay"]

    results = node.set_parameters([Parameter("publish_color", value=True), Parameter("publish_overlay", value=True),
                                   Parameter("publish_confidence", value=True), Parameter("overlay_alpha", value=1.0)])
    assert all(r.successful for r in results)
    msg = make_image(_rgb(32, 48, 2), "rgb8", _stamp(), "cam")
    labels = _send(io, msg)
    for name in ("color", "overlay", "confidence"):
        assert wait_for(lambda n=name: any(m.header.stamp == msg.header.stamp for m in outputs[n])), name
    color = next(m for m in outputs["color"] if m.header.stamp == msg.header.stamp)
    overlay = next(m for m in outputs["overlay"] if m.header.stamp == msg.header.stamp)
    label_ids = np.frombuffer(bytes(labels.data), np.uint8).reshape(32, 48)
    assert color.encoding == "rgb8" and overlay.encoding == "rgb8"
    assert np.array_equal(np.frombuffer(bytes(color.data), np.uint8).reshape(32, 48, 3), PALETTE[label_ids])
    # alpha 1.0: the overlay is exactly the colour mask
    assert np.array_equal(bytes(overlay.data), bytes(color.data))
    node.set_parameters([Parameter("publish_color", value=False), Parameter("publish_overlay", value=False),
                         Parameter("publish_confidence", value=False)])


def test_invalid_runtime_values_are_rejected_with_reason(node) -> None:
    result = node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0]
    assert not result.successful and "overlay_alpha" in result.reason
    assert node.get_parameter("overlay_alpha").value != 1.5


def test_malformed_frames_are_counted_and_next_frame_served(io, node) -> None:
    publisher, _, diagnostics = io
    good = make_image(_rgb(30, 40, 3), "rgb8", _stamp(), "cam")
    truncated = make_image(_rgb(30, 40, 3), "rgb8", _stamp(), "cam")
    truncated.data = bytes(truncated.data)[:-7]
    unknown = make_image(_rgb(30, 40, 3), "rgb8", _stamp(), "cam")
    unknown.encoding = "yuv422_weird"
    bad_step = make_image(_rgb(30, 40, 3), "rgb8", _stamp(), "cam")
    bad_step.step = 40  # smaller than width * 3
    zero = Image(height=0, width=0, encoding="rgb8", step=0)
    before = node.scheduler.accounting.snapshot()["rejected"]
    for msg in (truncated, unknown, bad_step, zero):
        publisher.publish(msg)
    labels = _send(io, good)
    assert labels.header.stamp == good.header.stamp
    after = node.scheduler.accounting.snapshot()["rejected"]
    for reason in ("data_length", "encoding", "step", "zero_size"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, reason
    n = len(diagnostics)
    assert wait_for(lambda: len(diagnostics) > n + 1)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert int(values["rejected_data_length"]) >= 1 and int(values["rejected_encoding"]) >= 1


def test_diagnostics_carry_latency_rates_counts_and_model(io, node) -> None:
    _send(io, make_image(_rgb(30, 40, 4), "rgb8", _stamp(), "cam"))
    _, _, diagnostics = io
    n = len(diagnostics)
    assert wait_for(lambda: len(diagnostics) > n)
    status = diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    for stage in ("upload", "preprocess", "inference", "postprocess", "download", "end_to_end"):
        for p in ("p50", "p90", "p99", "max"):
            assert f"{stage}_ms_{p}" in values
    for key in ("input_rate_hz", "output_rate_hz", "frames_received", "frames_processed",
                "frames_dropped_total", "frames_rejected_total", "model", "device", "precision"):
        assert key in values, key
    assert values["model"] == "regseg" and values["precision"] == "fp32"
    assert float(values["inference_ms_p50"]) > 0
    assert int(values["frames_processed"]) >= 1
    assert "seg_node" in status.name


def test_class_names_and_palette_are_parameters(node) -> None:
    names = node.get_parameter("class_names").value
    palette = node.get_parameter("palette").value
    assert list(names)[:2] == ["road", "sidewalk"] and len(names) == 19
    assert list(palette[:3]) == [128, 64, 128] and len(palette) == 57


def test_node_under_namespace_with_remapped_topic(ros, weights) -> None:
    node = ros.add(lambda **kw: SegmentationNode(namespace="front", **kw), device="cpu", precision="fp32",
                   weights=weights, image_topic="cam/image", max_age_ms=0.0)
    try:
        assert node.subscription.topic_name == "/front/cam/image"
        assert node.labels_pub.topic_name == "/front/segmentation/labels"
        labels = ros.collect(Image, "/front/segmentation/labels")
        publisher = ros.publisher("/front/cam/image")
        assert wait_for(lambda: publisher.get_subscription_count() > 0)
        assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
        msg = make_image(_rgb(20, 30, 5), "rgb8", _stamp(), "front_cam")
        publisher.publish(msg)
        assert wait_for(lambda: any(m.header.stamp == msg.header.stamp for m in labels))
    finally:
        ros.remove(node)


def test_invalid_startup_parameters_refuse_to_start(ros) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        ros.add(SegmentationNode, device="cpu", precision="int4")


def test_cv_bridge_converts_when_a_ros_install_provides_it(ros, weights, monkeypatch) -> None:
    """With cv_bridge importable the node validates first, then lets cv_bridge convert."""
    import seg_perception.frame_conversion as conversion_module
    from seg_perception.image_conversion import image_msg_to_rgb

    calls: list[str] = []

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append(f"{msg.encoding}->{desired_encoding}")
            return np.ascontiguousarray(image_msg_to_rgb(msg))

    monkeypatch.setattr(conversion_module, "CvBridge", FakeBridge)
    node = ros.add(lambda **kw: SegmentationNode(namespace="bridge", **kw), device="cpu", precision="fp32",
                   weights=weights, max_age_ms=0.0)
    try:
        labels = ros.collect(Image, "/bridge/segmentation/labels")
        publisher = ros.publisher("/bridge/camera/image_raw")
        assert wait_for(lambda: publisher.get_subscription_count() > 0)
        assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
        good = make_image(_rgb(20, 30, 9), "bgr8", _stamp(), "cam")
        bad = make_image(_rgb(20, 30, 9), "bgr8", _stamp(), "cam")
        bad.data = bytes(bad.data)[:-1]
        publisher.publish(bad)
        publisher.publish(good)
        assert wait_for(lambda: any(m.header.stamp == good.header.stamp for m in labels))
        assert calls == ["bgr8->rgb8"]  # the truncated frame never reached cv_bridge
        assert node.scheduler.accounting.snapshot()["rejected"].get("data_length") == 1
    finally:
        ros.remove(node)
