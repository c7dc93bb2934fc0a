"""Every registered architecture runs through the engine, and the node switches between them by
parameters alone, keeping its topics and diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from rclpy.parameter import Parameter
from ros_harness import RosHarness, make_image, wait_for
from sensor_msgs.msg import Image

from seg_perception.engine import EngineConfig, OutputRequest, SegmentationEngine
from seg_perception.models import build_model, list_models
from seg_perception.node import SegmentationNode

#: Small options so the big models stay quick on a CPU; everything else is the registry default.
OPTIONS = {"hrnet_ocr": {"scales": [0.5, 1.0]}}
ZOO = [(name, variant) for name, entry in list_models().items() for variant in entry.variants]


@pytest.mark.parametrize("name, variant", ZOO, ids=[f"{n}-{v}" for n, v in ZOO])
def test_engine_runs_every_model(name: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 19, variant, **OPTIONS.get(name, {}))
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32"), model=model)
    frame = np.random.default_rng(0).integers(0, 256, (66, 98, 3), dtype=np.uint8)
    result = engine.infer(frame, OutputRequest(color=True, confidence=True))
    assert result.labels.shape == (66, 98) and result.labels.max() < 19
    assert result.color.shape == (66, 98, 3) and result.confidence.shape == (66, 98)
    with torch.no_grad():
        x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 - engine._mean / 255) / (engine._std / 255)
        expected = model(x).argmax(1)[0].numpy()
    assert (result.labels == expected).mean() > 0.999


@pytest.mark.ros
def test_node_switches_architecture_by_parameters_alone() -> None:
    ros = RosHarness()
    try:
        node = ros.add(SegmentationNode, device="cpu", precision="fp32", max_age_ms=0.0, inference_size=[48, 64])
        labels = ros.collect(Image, "segmentation/labels")
        publisher = ros.publisher("camera/image_raw")
        assert wait_for(lambda: publisher.get_subscription_count() > 0)
        assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
        rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for i, (name, variant, options) in enumerate([
            ("deeplabv3plus", "mobilenetv2", "{}"),
            ("deeplabv1", "largefov", "{}"),
            ("hrnet_ocr", "w48", "{scales: [1.0]}"),
            ("regseg", "exp48_decoder26", "{}"),
        ]):
            result = node.set_parameters_atomically([
                Parameter("model", value=name), Parameter("variant", value=variant),
                Parameter("model_options", value=options),
            ])
            assert result.successful, result.reason
            assert wait_for(lambda n=name: node.scheduler.engine.description["model"] == n, timeout=120), name
            assert node.scheduler.engine.description["variant"] == variant
            msg = make_image(rgb, "rgb8", Time(sec=100, nanosec=i), "cam")
            publisher.publish(msg)
            assert wait_for(lambda m=msg: any(x.header.stamp == m.header.stamp for x in labels), timeout=60), name
            got = next(x for x in labels if x.header.stamp == msg.header.stamp)
            assert (got.height, got.width, got.encoding) == (48, 64, "mono8")
            values = {kv.key: kv.value for kv in node.diagnostics().status[0].values}
            assert values["model"] == name and values["variant"] == variant
    finally:
        ros.close()
