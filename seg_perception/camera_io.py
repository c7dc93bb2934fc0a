"""One camera's subscription and publishers, with the QoS its parameters ask for.

A camera's outputs (``segmentation/{labels,color,overlay,confidence}``) are created when the node
is configured and its subscription when it is activated (a plain node does both at startup); a
lifecycle node's deactivate removes the subscription and cleanup the outputs. The outputs are
managed publishers: they publish only while the node is active.

Output QoS comes from ``output_qos_reliability`` and ``output_qos_depth`` (node-wide, or per
camera): a subscriber that asks for reliable delivery never matches a best-effort output, as DDS
decides. :meth:`CameraIO.has_subscribers` is the ``lazy`` rule: a camera is served while someone
subscribes to an output it publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.lifecycle import LifecycleNode
from rclpy.publisher import Publisher
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

from .engine_api import OutputRequest, SegmentationResult
from .topics import OUTPUTS, output_topic

#: The optional outputs, each published when its ``publish_<output>`` parameter is true.
OPTIONAL_OUTPUTS = tuple(name for name in OUTPUTS if name != "labels")


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """Keep-last ``depth`` with ``reliability`` (``reliable`` or ``best_effort``)."""
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=policy, history=HistoryPolicy.KEEP_LAST)


@dataclass
class CameraIO:
    """One camera's publishers and, while the node is active, its subscription."""

    camera: str
    labels: Publisher
    color: Publisher
    overlay: Publisher
    confidence: Publisher
    subscription: Subscription | None = None

    @property
    def publishers(self) -> tuple[Publisher, ...]:
        return self.labels, self.color, self.overlay, self.confidence

    def has_subscribers(self, enabled: Callable[[str], bool]) -> bool:
        """Whether anyone subscribes to an output this camera publishes: its labels, or an
        optional output that ``enabled(name)`` says is published."""
        return self.labels.get_subscription_count() > 0 or any(
            enabled(name) and getattr(self, name).get_subscription_count() > 0 for name in OPTIONAL_OUTPUTS)

    def request(self, enabled: Callable[[str], bool], overlay_alpha: float) -> OutputRequest:
        """The outputs to compute for the next frame: an optional one only when enabled and
        someone subscribes to it."""
        wanted = {name: enabled(name) and getattr(self, name).get_subscription_count() > 0
                  for name in OPTIONAL_OUTPUTS}
        return OutputRequest(**wanted, overlay_alpha=overlay_alpha)

    def publish(self, header: Any, result: SegmentationResult) -> None:
        """Publish a frame's results with the header of the frame they were computed from."""
        self.labels.publish(_image(header, result.labels, "mono8"))
        if result.color is not None:
            self.color.publish(_image(header, result.color, "rgb8"))
        if result.overlay is not None:
            self.overlay.publish(_image(header, result.overlay, "rgb8"))
        if result.confidence is not None:
            self.confidence.publish(_image(header, result.confidence, "mono8"))

    def close(self, node: LifecycleNode, *, outputs: bool) -> None:
        """Unsubscribe; with ``outputs`` destroy the publishers too (``node``: their owner)."""
        if self.subscription is not None:
            node.destroy_subscription(self.subscription)
            self.subscription = None
        if outputs:
            for publisher in self.publishers:
                node.destroy_lifecycle_publisher(publisher)


def _image(header: Any, array: Any, encoding: str) -> Image:
    """Wrap a uint8 HxW or HxWx3 array as an Image with the input's header."""
    msg = Image(header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                is_bigendian=0)
    msg.step = array.shape[1] * (array.shape[2] if array.ndim == 3 else 1)
    msg.data = array.tobytes()
    return msg


#: Returns a camera's effective value of a parameter (its own override, else the node-wide one).
Setting = Callable[[str], Any]


def open_outputs(node: LifecycleNode, camera: str, setting: Setting) -> CameraIO:
    """The camera's four output publishers, managed (they publish only while ``node`` is
    active), with the output QoS ``setting`` gives."""
    qos = qos_profile(setting("output_qos_reliability"), setting("output_qos_depth"))
    return CameraIO(camera, **{name: node.create_lifecycle_publisher(Image, output_topic(camera, name), qos)
                               for name in OUTPUTS})


def open_input(node: LifecycleNode, io: CameraIO, topic: str, setting: Setting, depth: int,
               callback: Callable[[Any], None]) -> None:
    """Subscribe the camera to ``topic`` with its transport's message type and its input QoS
    (``depth``: the node-wide ``qos_depth``). Idempotent."""
    if io.subscription is None:
        kind = CompressedImage if setting("image_transport") == "compressed" else Image
        qos = qos_profile(setting("qos_reliability"), depth)
        io.subscription = node.create_subscription(kind, topic, callback, qos)
