"""seg_node with three cameras over real DDS (loopback): per-camera topics, headers and sizes,
per-camera overrides, isolation of bad input, one status per camera plus one for the engine,
a silent camera going WARN, and invalid camera configurations refused at startup."""

from __future__ import annotations

import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.node import SegmentationNode
from seg_perception.params import load_params_file, validate_config

pytestmark = pytest.mark.ros

CAMERAS = ["front", "left", "right"]
#: Where each camera reads: front and right are set, left uses the default.
INPUTS = {"front": "/cams/front/image", "left": "/multi/left/camera/image_raw", "right": "/cams/right/image"}
SIZES = {"front": (24, 40), "left": (32, 48), "right": (16, 64)}


@pytest.fixture(scope="module")
def node(ros: RosHarness, weights: str) -> SegmentationNode:
    params = {
        "cameras": CAMERAS, "device": "cpu", "precision": "fp32", "weights": weights, "max_age_ms": 0.0,
        "diagnostics_period": 0.25, "silence_warn_s": 1.5, "latency_warn_ms": 30000.0,
        "latency_error_ms": 60000.0, "drop_warn_ratio": 0.9, "drop_error_ratio": 1.0,
        "front.image_topic": INPUTS["front"], "right.image_topic": INPUTS["right"],
        "right.publish_color": True,
    }
    node = ros.add(lambda **kw: SegmentationNode(namespace="multi", **kw), **params)
    yield node
    ros.remove(node)


@pytest.fixture(scope="module")
def io(ros: RosHarness, node: SegmentationNode):
    labels = {c: ros.collect(Image, f"/multi/{c}/segmentation/labels") for c in CAMERAS}
    colors = {c: ros.collect(Image, f"/multi/{c}/segmentation/color") for c in CAMERAS}
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    publishers = {c: ros.publisher(INPUTS[c]) for c in CAMERAS}
    for camera in CAMERAS:
        assert wait_for(lambda c=camera: publishers[c].get_subscription_count() > 0)
        assert wait_for(lambda c=camera: node.camera_io[c].labels.get_subscription_count() > 0)
    return publishers, labels, colors, diagnostics


_stamps = iter(range(1, 1_000_000))


def _frame(camera: str, seed: int) -> tuple[Image, np.ndarray]:
    rgb = np.random.default_rng(seed).integers(0, 256, (*SIZES[camera], 3), dtype=np.uint8)
    sec, nanosec = divmod(time.time_ns() + next(_stamps), 1_000_000_000)  # now, and unique
    return make_image(rgb, "rgb8", Time(sec=sec, nanosec=nanosec), f"{camera}_optical"), rgb


def _statuses(diagnostics: list, after: int) -> dict[str, object]:
    """The latest seg_perception statuses by name suffix ("engine" or the camera)."""
    out = {}
    for array in diagnostics[after:]:
        for status in array.status:
            if status.name.startswith("seg_perception: /multi/seg_node "):
                out[status.name.rsplit(" ", 1)[-1]] = status
    return out


def test_each_camera_reads_its_topic_and_publishes_under_its_name(node: SegmentationNode) -> None:
    for camera in CAMERAS:
        io = node.camera_io[camera]
        assert io.subscription.topic_name == INPUTS[camera]
        assert io.labels.topic_name == f"/multi/{camera}/segmentation/labels"
        assert io.confidence.topic_name == f"/multi/{camera}/segmentation/confidence"


def test_every_camera_gets_its_own_labels_with_its_header_and_size(io, reference_engine) -> None:
    publishers, labels, colors, _ = io
    sent = {camera: _frame(camera, seed) for seed, camera in enumerate(CAMERAS)}
    for camera, (msg, _) in sent.items():
        publishers[camera].publish(msg)
    for camera, (msg, rgb) in sent.items():
        assert wait_for(lambda c=camera, m=msg: any(x.header.stamp == m.header.stamp for x in labels[c]), 30.0), camera
        got = next(x for x in labels[camera] if x.header.stamp == msg.header.stamp)
        assert got.header.frame_id == f"{camera}_optical"
        assert (got.height, got.width, got.encoding) == (*SIZES[camera], "mono8")
        ids = np.frombuffer(bytes(got.data), np.uint8).reshape(SIZES[camera])
        assert np.array_equal(ids, reference_engine.infer(rgb).labels)
        others = [c for c in CAMERAS if c != camera]
        assert not any(x.header.stamp == msg.header.stamp for c in others for x in labels[c])
    # right.publish_color overrides publish_color (false) for that camera only
    right = sent["right"][0]
    assert wait_for(lambda: any(x.header.stamp == right.header.stamp for x in colors["right"]))
    assert not colors["front"] and not colors["left"]


def test_bad_frames_on_one_camera_leave_the_others_served(io, node: SegmentationNode) -> None:
    publishers, labels, _, _ = io
    before = node.scheduler.accounting.snapshot("left")
    bad, _ = _frame("left", 40)
    bad.data = bytes(bad.data)[:-5]
    good, _ = _frame("front", 41)
    publishers["left"].publish(bad)
    publishers["front"].publish(good)
    assert wait_for(lambda: any(x.header.stamp == good.header.stamp for x in labels["front"]), 30.0)
    assert wait_for(lambda: node.scheduler.accounting.snapshot("left")["received"] == before["received"] + 1)
    after = node.scheduler.accounting.snapshot("left")
    assert after["rejected"].get("data_length", 0) == before["rejected"].get("data_length", 0) + 1
    assert node.scheduler.accounting.snapshot("front")["rejected"] == {}


def test_diagnostics_one_status_per_camera_and_one_for_the_engine(io, node: SegmentationNode) -> None:
    publishers, labels, _, diagnostics = io
    for seed, camera in enumerate(CAMERAS):
        publishers[camera].publish(_frame(camera, 60 + seed)[0])
    assert wait_for(lambda: all(node.scheduler.accounting.snapshot(c)["in_flight"] == 0 for c in CAMERAS), 30.0)
    n = len(diagnostics)
    assert wait_for(lambda: len(diagnostics) > n)
    statuses = _statuses(diagnostics, n)
    assert set(statuses) == {"engine", *CAMERAS}
    engine = {kv.key: kv.value for kv in statuses["engine"].values}
    assert engine["model"] == "regseg" and engine["cameras"] == ",".join(CAMERAS)
    for key in ("inference_ms_p50", "batch_size_p50", "batch_size_max", "total_frames_received"):
        assert key in engine, key
    totals = 0
    for camera in CAMERAS:
        values = {kv.key: kv.value for kv in statuses[camera].values}
        assert values["image_topic"] == INPUTS[camera]
        for key in ("end_to_end_ms_p50", "end_to_end_ms_p99", "input_rate_hz", "output_rate_hz",
                    "frames_processed", "seconds_since_last_frame"):
            assert key in values, (camera, key)
        assert int(values["frames_processed"]) >= 1
        totals += int(values["frames_received"])
    assert totals == int(engine["total_frames_received"])


def test_a_silent_camera_goes_warn_while_the_others_stay_ok(io) -> None:
    publishers, labels, _, diagnostics = io
    n = len(diagnostics)
    latest = {}
    for i in range(24):  # ~2.4 s of front and left at 10 Hz; right says nothing
        for camera in ("front", "left"):
            publishers[camera].publish(_frame(camera, 100 + i)[0])
        wait_for(lambda: False, 0.1)
        latest = _statuses(diagnostics, n)
        if latest.get("right") is not None and latest["right"].level == b"\x01":
            break
    right = latest["right"]
    assert right.level == b"\x01" and "no frames for" in right.message
    assert latest["front"].level == b"\x00" and latest["left"].level == b"\x00"


def test_per_camera_parameters_validate_and_apply_at_runtime(node: SegmentationNode) -> None:
    refused = node.set_parameters([Parameter("left.max_age_ms", value=-3.0)])[0]
    assert not refused.successful and "left.max_age_ms" in refused.reason
    assert not node.set_parameters([Parameter("left.publish_color", value="yes")])[0].successful
    restart = node.set_parameters([Parameter("left.image_topic", value="/elsewhere")])[0]
    assert not restart.successful and "restart" in restart.reason
    assert node.set_parameters([Parameter("left.max_age_ms", value=250.0)])[0].successful
    assert node.camera_values["left"]["max_age_ms"] == 250.0 and node.camera_values["front"]["max_age_ms"] is None
    assert node.set_parameters([Parameter("max_batch_size", value=1)])[0].successful
    assert node.scheduler.max_batch_size == 1


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"cameras": ["front", "1st"]}, "camera name '1st' is not a valid ROS name"),
        ({"cameras": ["front", "front"]}, "camera 'front' is listed twice"),
        ({"cameras": ["model"]}, "camera name 'model' is also a node parameter"),
        ({"cameras": ["a", "b"], "a.image_topic": "/same", "b.image_topic": "/same"}, "cameras a, b all read /same"),
        ({"cameras": ["a"], "a.max_age_ms": -1.0}, "a.max_age_ms must be >= 0"),
        ({"cameras": ["a"], "a.image_topic": "no spaces please"}, "a.image_topic 'no spaces please' is not a valid"),
        # the topics actually subscribed clash: a compressed camera reads <topic>/compressed
        ({"cameras": ["a", "b"], "a.image_topic": "/x", "a.image_transport": "compressed",
          "b.image_topic": "/x/compressed"}, "cameras a, b all read /x/compressed"),
        # a camera reading the node's own output would segment it forever
        ({"cameras": ["a"], "a.image_topic": "a/segmentation/labels"},
         "camera 'a' reads /bad/a/segmentation/labels, which this node publishes"),
        ({"cameras": ["a", "b"], "a.image_topic": "/bad/b/segmentation/color"}, "which this node publishes"),
        ({"image_topic": "segmentation/overlay"}, "the camera reads /bad/segmentation/overlay, which this node"),
    ],
)
def test_invalid_camera_configurations_are_refused_at_startup(ros, params, reason) -> None:
    built = []
    with pytest.raises(ValueError, match="invalid seg_node parameters") as info:
        ros.add(lambda **kw: SegmentationNode(namespace="bad", engine_factory=built.append, **kw),
                device="cpu", precision="fp32", **params)
    assert reason in str(info.value) and built == []


def test_shipped_three_camera_config_is_valid() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "config" / "seg_3cameras.yaml"
    values = load_params_file(str(path))
    assert values["cameras"] == ["front", "front_left", "front_right"]
    assert validate_config(values) == []
    assert validate_config({**values, "front_left": {"image_topic": values["front"]["image_topic"]}})
