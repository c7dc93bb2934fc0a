"""Output QoS and lazy serving over real DDS: the QoS a subscriber sees on the outputs (node-wide
and per camera; a reliable subscriber never matches a best-effort output), and ``lazy``, which
skips a camera's frames while nobody subscribes to its outputs and serves again with the first
frame after a subscriber appears."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from reliability_support import CPU_PARAMS, FakeEngine, image_msg
from ros_harness import RosHarness, wait_for
from sensor_msgs.msg import Image

from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros

BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_namespaces = (f"outputs{i}" for i in itertools.count())
_red = itertools.count(1)


def _node(ros: RosHarness, **params: Any) -> tuple[SegmentationNode, str]:
    namespace = next(_namespaces)
    node = ros.add(lambda **kw: SegmentationNode(namespace=namespace, engine_factory=FakeEngine, **kw),
                   **{**CPU_PARAMS, **params})
    return node, namespace


def _frame() -> Image:
    """A frame whose labels (the fake engine's: its red channel) name it."""
    return image_msg(np.full((6, 8, 3), next(_red) % 250, np.uint8))


def _labels_of(received: list[Image], msg: Image) -> bool:
    return any(m.header.stamp == msg.header.stamp for m in received)


def _offered(ros: RosHarness, topic: str) -> QoSProfile:
    (info,) = [i for i in ros.probe.get_publishers_info_by_topic(topic) if i.node_name == "seg_node"]
    return info.qos_profile


def test_outputs_offer_the_configured_qos_and_a_reliable_subscriber_gets_nothing(ros: RosHarness) -> None:
    node, ns = _node(ros, output_qos_reliability="best_effort", output_qos_depth=3)
    try:
        topic = f"/{ns}/segmentation/labels"
        assert _offered(ros, topic).reliability == ReliabilityPolicy.BEST_EFFORT  # as discovery shows it
        own = node.labels_pub.qos_profile  # history and depth are not discovered: the publisher's own
        assert (own.history, own.depth) == (HistoryPolicy.KEEP_LAST, 3)
        best_effort: list[Image] = []
        reliable: list[Image] = []
        incompatible: list[Any] = []
        from rclpy.event_handler import SubscriptionEventCallbacks

        ros.probe.create_subscription(Image, topic, best_effort.append, BEST_EFFORT)
        strict = ros.probe.create_subscription(
            Image, topic, reliable.append, RELIABLE,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=incompatible.append))
        camera = ros.publisher(f"/{ns}/camera/image_raw")
        assert wait_for(lambda: camera.get_subscription_count() > 0 and node.labels_pub.get_subscription_count() > 0)
        msg = _frame()
        camera.publish(msg)
        assert wait_for(lambda: _labels_of(best_effort, msg), 10.0)
        assert wait_for(lambda: bool(incompatible), 5.0), "the reliable subscriber was not told why"
        assert strict.get_publisher_count() == 0 and reliable == []
        assert node.labels_pub.get_subscription_count() == 1  # only the best-effort one matched
    finally:
        ros.remove(node)


def test_default_outputs_are_reliable_keep_last_5(ros: RosHarness) -> None:
    node, ns = _node(ros)
    try:
        assert _offered(ros, f"/{ns}/segmentation/labels").reliability == ReliabilityPolicy.RELIABLE
        assert node.labels_pub.qos_profile.depth == 5
    finally:
        ros.remove(node)


def test_per_camera_output_qos_overrides_the_node_wide_one(ros: RosHarness) -> None:
    node, ns = _node(ros, cameras=["front", "rear"], output_qos_depth=2,
                     **{"front.output_qos_reliability": "best_effort", "rear.output_qos_depth": 9})
    try:
        assert _offered(ros, f"/{ns}/front/segmentation/labels").reliability == ReliabilityPolicy.BEST_EFFORT
        assert _offered(ros, f"/{ns}/rear/segmentation/color").reliability == ReliabilityPolicy.RELIABLE
        assert node.camera_io["front"].labels.qos_profile.depth == 2
        assert node.camera_io["rear"].color.qos_profile.depth == 9
    finally:
        ros.remove(node)


def test_output_qos_is_restart_only_and_validated(ros: RosHarness) -> None:
    node, _ = _node(ros)
    try:
        (result,) = node.set_parameters([Parameter("output_qos_reliability", value="best_effort")])
        assert not result.successful and "restart" in result.reason
    finally:
        ros.remove(node)
    with pytest.raises(ValueError, match="output_qos_reliability must be one of"):
        _node(ros, output_qos_reliability="sometimes")


def test_lazy_skips_frames_until_someone_subscribes_and_resumes_within_one_frame(ros: RosHarness) -> None:
    node, ns = _node(ros, lazy=True)
    try:
        camera = ros.publisher(f"/{ns}/camera/image_raw")
        assert wait_for(lambda: camera.get_subscription_count() > 0)
        books = node.scheduler.accounting.snapshot
        for _ in range(3):
            camera.publish(_frame())
        assert wait_for(lambda: books()["dropped"].get("no_subscribers", 0) == 3, 10.0), books()
        assert books()["processed"] == 0

        labels: list[Image] = []
        subscription = ros.probe.create_subscription(Image, f"/{ns}/segmentation/labels", labels.append, RELIABLE)
        assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
        msg = _frame()
        camera.publish(msg)  # the first frame after the subscriber appeared is served
        assert wait_for(lambda: _labels_of(labels, msg), 10.0), books()
        assert books()["dropped"].get("no_subscribers", 0) == 3

        ros.probe.destroy_subscription(subscription)
        assert wait_for(lambda: node.labels_pub.get_subscription_count() == 0)
        camera.publish(_frame())
        assert wait_for(lambda: books()["dropped"].get("no_subscribers", 0) == 4, 10.0), books()
        assert books()["processed"] == 1
        status = node.diagnostics().status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert values["dropped_no_subscribers"] == "4" and status.level == b"\x00", status
    finally:
        ros.remove(node)


def test_lazy_counts_only_outputs_the_camera_publishes(ros: RosHarness) -> None:
    node, ns = _node(ros, lazy=True)
    try:
        camera = ros.publisher(f"/{ns}/camera/image_raw")
        colors: list[Image] = []
        ros.probe.create_subscription(Image, f"/{ns}/segmentation/color", colors.append, RELIABLE)
        color = node.camera_io[""].color
        assert wait_for(lambda: camera.get_subscription_count() > 0 and color.get_subscription_count() > 0)
        books = node.scheduler.accounting.snapshot
        camera.publish(_frame())  # a colour subscriber, but publish_color is false: nobody gets anything
        assert wait_for(lambda: books()["dropped"].get("no_subscribers", 0) == 1, 10.0), books()
        (result,) = node.set_parameters([Parameter("publish_color", value=True)])
        assert result.successful
        camera.publish(_frame())  # now someone gets its colour mask: served
        assert wait_for(lambda: books()["processed"] == 1, 10.0), books()
        assert books()["dropped"] == {"no_subscribers": 1}
    finally:
        ros.remove(node)


def test_lazy_is_per_camera_and_a_runtime_parameter(ros: RosHarness) -> None:
    node, ns = _node(ros, cameras=["front", "rear"], **{"rear.lazy": True})
    try:
        cameras = {c: ros.publisher(f"/{ns}/{c}/camera/image_raw") for c in ("front", "rear")}
        assert wait_for(lambda: all(p.get_subscription_count() > 0 for p in cameras.values()))
        books = node.scheduler.accounting.snapshot
        for publisher in cameras.values():
            publisher.publish(_frame())
        assert wait_for(lambda: books("front")["processed"] == 1 and books("rear")["received"] == 1, 10.0)
        assert books("rear")["dropped"] == {"no_subscribers": 1} and books("front")["dropped"] == {}
        (result,) = node.set_parameters([Parameter("rear.lazy", value=False)])
        assert result.successful, result.reason
        cameras["rear"].publish(_frame())
        assert wait_for(lambda: books("rear")["processed"] == 1, 10.0), books("rear")
    finally:
        ros.remove(node)
