"""seg_node with ``backend:=onnxruntime`` over real DDS (loopback), and a runtime switch to torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.models import build_model
from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros

SIZE = (24, 40)


def test_node_serves_labels_with_onnxruntime_and_switches_backend_at_runtime(tmp_path: Path) -> None:
    torch.manual_seed(21)
    weights = tmp_path / "regseg.pt"
    torch.save(build_model("regseg").state_dict(), weights)
    ros = RosHarness()
    try:
        node = ros.add(SegmentationNode, device="cpu", precision="fp32", weights=str(weights), backend="onnxruntime",
                       cache_dir=str(tmp_path / "cache"), max_age_ms=0.0)
        assert node.scheduler.engine.description["backend"] == "onnxruntime (CPUExecutionProvider)"
        labels_out = ros.collect(Image, "segmentation/labels")
        publisher = ros.publisher("camera/image_raw")
        assert wait_for(lambda: publisher.get_subscription_count() > 0 and node.labels_pub.get_subscription_count() > 0)
        rgb = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        reference = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(weights),
                                                    backend="torch")).infer(rgb).labels

        def send(nanosec: int) -> np.ndarray:
            publisher.publish(make_image(rgb, "rgb8", Time(sec=1, nanosec=nanosec), "cam"))
            assert wait_for(lambda: any(m.header.stamp.nanosec == nanosec for m in labels_out), 30.0)
            msg = next(m for m in labels_out if m.header.stamp.nanosec == nanosec)
            return np.frombuffer(bytes(msg.data), np.uint8).reshape(SIZE)

        assert (send(1) == reference).mean() >= 0.999
        assert node.set_parameters([Parameter("backend", value="torch")])[0].successful
        assert wait_for(lambda: node.scheduler.engine.backend == "torch", 60.0)
        assert np.array_equal(send(2), reference)
        assert not node.set_parameters([Parameter("backend", value="tflite")])[0].successful
    finally:
        ros.close()
