"""A tiny in-process ROS 2 harness for tests: one context, an executor thread, a probe node.

Tests publish camera frames and collect outputs over real DDS on loopback (conftest.py sets
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a per-process ROS_DOMAIN_ID).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from polling import wait_for  # noqa: F401  (tests import it from here too)
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


class RosHarness:
    """Owns a context, an executor spinning in a thread, and a probe node for pub/sub."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.probe = Node("probe", context=self.context)
        self.executor.add_node(self.probe)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._nodes: list[Node] = []

    def add(self, factory: Callable[..., Node], **params: Any) -> Node:
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        node = factory(parameter_overrides=overrides, context=self.context)
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def remove(self, node: Node) -> None:
        self.executor.remove_node(node)
        node.destroy_node()
        self._nodes.remove(node)

    def collect(self, msg_type: type, topic: str, qos: QoSProfile = RELIABLE) -> list[Any]:
        received: list[Any] = []
        self.probe.create_subscription(msg_type, topic, received.append, qos)
        return received

    def publisher(self, topic: str, msg_type: type = Image, qos: QoSProfile = RELIABLE) -> Any:
        return self.probe.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        for node in list(self._nodes):
            self.remove(node)
        self.executor.shutdown()
        self.probe.destroy_node()
        rclpy.try_shutdown(context=self.context)


def make_image(rgb: np.ndarray, encoding: str, stamp: Any, frame_id: str, pad: int = 0) -> Image:
    """Encode an RGB array as an Image of ``encoding`` (optionally with row padding)."""
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    elif encoding == "bgra8":
        pixels = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    elif encoding == "mono8":
        pixels = rgb[:, :, 0]
    else:
        raise ValueError(encoding)
    height, width = rgb.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    if pad:
        rows = np.hstack([rows, np.zeros((height, pad), np.uint8)])
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=rows.shape[1])
    msg.data = rows.tobytes()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg
