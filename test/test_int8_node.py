"""seg_node with ``precision: int8`` over real DDS (loopback): the parity gate refuses the int8
engine at startup, the node serves the fp32 reference with a WARN carrying the measured figure;
lowering the threshold at runtime swaps int8 in; calibration outside calibration_dirs is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.evaluation.sample_drive import make_sample_drive, render_drive
from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros

SIZE = (48, 96)


def _engine_status(node: SegmentationNode) -> tuple[int, str, dict[str, str]]:
    status = node.diagnostics().status[0]
    return status.level[0], status.message, {kv.key: kv.value for kv in status.values}


def test_node_falls_back_to_the_fp32_reference_with_a_warning_and_swaps_int8_in_when_allowed(tmp_path: Path) -> None:
    calibration = make_sample_drive(tmp_path / "calib", 8, SIZE, seed=5, progress=False).cityscapes
    ros = RosHarness()
    try:
        node = ros.add(SegmentationNode, device="cpu", precision="int8", weights="synthetic_street",
                       calibration=str(calibration), calibration_frames=3, parity_min_agreement=1.0,
                       cache_dir=str(tmp_path / "cache"), max_age_ms=0.0)
        engine = node.scheduler.engine
        assert (engine.precision, engine.backend) == ("fp32", "torch")
        level, message, values = _engine_status(node)
        assert level == 1 and "refused by the parity gate: label agreement" in message
        assert "serving the fp32 reference" in values["parity_fallback"]
        assert node.get_parameter("precision").value == "int8"

        labels_out = ros.collect(Image, "segmentation/labels")
        publisher = ros.publisher("camera/image_raw")
        assert wait_for(lambda: publisher.get_subscription_count() > 0 and node.labels_pub.get_subscription_count() > 0)
        rgb = list(render_drive(1, *SIZE, seed=31))[0][0]
        reference = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights="synthetic_street",
                                                    backend="torch")).infer(rgb).labels

        def send(nanosec: int) -> np.ndarray:
            publisher.publish(make_image(rgb, "rgb8", Time(sec=1, nanosec=nanosec), "cam"))
            assert wait_for(lambda: any(m.header.stamp.nanosec == nanosec for m in labels_out), 60.0)
            msg = next(m for m in labels_out if m.header.stamp.nanosec == nanosec)
            return np.frombuffer(bytes(msg.data), np.uint8).reshape(SIZE)

        assert np.array_equal(send(1), reference)  # the reference serves, exactly

        outside = node.set_parameters([Parameter("calibration", value=str(tmp_path))])[0]
        assert not outside.successful and "outside calibration_dirs" in outside.reason

        assert node.set_parameters([Parameter("parity_min_agreement", value=0.9)])[0].successful
        assert wait_for(lambda: node.scheduler.engine.precision == "int8", 180.0)
        _, message, values = _engine_status(node)  # (the camera part warns about the test's 1970 stamps)
        assert "parity" not in message and "parity_fallback" not in values
        assert "held-out calibration frames" in values["parity"]
        assert (send(2) == reference).mean() > 0.95
    finally:
        ros.close()
