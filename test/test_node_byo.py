"""seg_node serving networks that are not in the registry (``model: onnx``) over real DDS
(loopback): labels equal to a reference computed in the test, several cameras batched through a
dynamic network, and a runtime reload to a bad file that keeps the previous network serving."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from byo_support import frame, reference_labels
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.cityscapes import CLASS_NAMES
from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros

_stamps = iter(range(1, 1_000_000))


def _send(publisher, received: list, rgb: np.ndarray, frame_id: str) -> Image:
    """Publish ``rgb`` and wait for its labels; returns the labels message."""
    sec, nanosec = divmod(time.time_ns() + next(_stamps), 1_000_000_000)
    msg = make_image(rgb, "rgb8", Time(sec=sec, nanosec=nanosec), frame_id)
    publisher.publish(msg)
    assert wait_for(lambda: any(m.header.stamp == msg.header.stamp for m in received), 60.0)
    return next(m for m in received if m.header.stamp == msg.header.stamp)


def _labels(msg: Image) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)


def test_node_serves_a_fixed_size_network_and_a_bad_file_at_runtime_keeps_it(byo_networks, tmp_path: Path) -> None:
    weights = shutil.copy(byo_networks.lraspp_path, tmp_path / "lraspp_256.onnx")
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(Path(weights).read_bytes()[:5000])
    ros = RosHarness()
    try:
        node = ros.add(SegmentationNode, model="onnx", weights=str(weights), device="cpu", max_age_ms=0.0)
        engine = node.scheduler.engine
        assert engine.description["model"] == "onnx" and engine.description["backend"].startswith("onnxruntime")
        assert tuple(node.get_parameter("class_names").value) == CLASS_NAMES
        received = ros.collect(Image, "segmentation/labels")
        publisher = ros.publisher("camera/image_raw")
        assert wait_for(lambda: publisher.get_subscription_count() > 0 and node.labels_pub.get_subscription_count() > 0)
        rgb = frame(40, 72, seed=1)
        expected = reference_labels(byo_networks.lraspp, rgb, (256, 256))
        assert len(np.unique(expected)) >= 3
        msg = _send(publisher, received, rgb, "front_optical")
        assert msg.header.frame_id == "front_optical" and (msg.height, msg.width) == (40, 72)
        assert (_labels(msg) == expected).mean() >= 0.995

        assert not node.set_parameters([Parameter("backend", value="torch")])[0].successful
        assert node.set_parameters([Parameter("weights", value=str(bad))])[0].successful
        assert wait_for(lambda: node.scheduler.loading is None and node.get_parameter("weights").value == str(weights),
                        60.0)
        assert node.scheduler.engine is engine
        assert (_labels(_send(publisher, received, rgb, "front_optical")) == expected).mean() >= 0.995
    finally:
        ros.close()


def test_several_cameras_run_as_one_batch_through_a_dynamic_network(byo_networks) -> None:
    cameras = {"front": (48, 80), "rear": (40, 64)}
    ros = RosHarness()
    try:
        node = ros.add(SegmentationNode, model="onnx", weights=str(byo_networks.deeplabv3_path), device="cpu",
                       cameras=list(cameras), inference_size=[64, 96], batch_wait_ms=1000.0, max_age_ms=0.0)
        network = node.scheduler.engine._forward
        runs: list[tuple[int, ...]] = []
        run = network.run_raw

        def spy(x: torch.Tensor) -> torch.Tensor:
            runs.append(tuple(x.shape))
            return run(x)

        network.run_raw = spy
        received = {c: ros.collect(Image, f"/{c}/segmentation/labels") for c in cameras}
        publishers = {c: ros.publisher(f"/{c}/camera/image_raw") for c in cameras}
        for camera in cameras:
            assert wait_for(lambda c=camera: publishers[c].get_subscription_count() > 0
                            and node.camera_io[c].labels.get_subscription_count() > 0)
        images = {c: frame(*size, seed=i + 3) for i, (c, size) in enumerate(cameras.items())}
        stamp = Time(sec=int(time.time()), nanosec=next(_stamps))
        for camera, rgb in images.items():
            publishers[camera].publish(make_image(rgb, "rgb8", stamp, camera))
        for camera, rgb in images.items():
            assert wait_for(lambda c=camera: any(m.header.stamp == stamp for m in received[c]), 60.0), camera
            msg = next(m for m in received[camera] if m.header.stamp == stamp)
            assert msg.header.frame_id == camera and (msg.height, msg.width) == cameras[camera]
            expected = reference_labels(byo_networks.deeplabv3, rgb, (64, 96))
            assert len(np.unique(expected)) >= 3
            assert (_labels(msg) == expected).mean() >= 0.995, camera
        assert (2, 3, 64, 96) in runs
    finally:
        ros.close()
