"""The evaluator's end of DDS in a live run: it publishes each camera's images to the node,
collects the labels that come back, and reads the node's ``/diagnostics``.

Its callbacks run on an executor thread of the evaluator's process; the node runs in a process of
its own (:mod:`.node_process`), so nothing here competes with the node for a GIL.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Any

import numpy as np

from .node_process import parse_diagnostics

#: History of the replay publisher and the labels subscription (frames of slack, about 3 s at 17 Hz).
REPLAY_QOS_DEPTH = 50
#: The name of the node's entry in /diagnostics.
NODE_STATUS_NAME = "seg_perception: /seg_node"


class Probe:
    """One publisher and one labels subscription per camera (``camera.topics(params)``), and a
    ``/diagnostics`` subscription; labels arrive in :attr:`results`, statuses via :meth:`diagnostics`."""

    def __init__(self, context: Any, cameras: list[Any], params: dict[str, Any]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.results: queue.Queue = queue.Queue()  # (camera index, received ns, stamp ns, labels)
        self.collector_lost = 0
        self.publishers: list[Any] = []
        self.image_types: list[type] = []
        self._matched: list[threading.Event] = []
        self._diagnostics: tuple[int, dict[str, dict[str, Any]]] = (0, {})
        self._diagnostics_cond = threading.Condition()
        self.node = Node("seg_eval_replay", context=context)
        qos = QoSProfile(depth=REPLAY_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
        for index, camera in enumerate(cameras):
            image_topic, labels_topic = camera.topics(params)
            image_type = CompressedImage if camera.compressed else Image
            published, collected = threading.Event(), threading.Event()
            self._matched += [published, collected]
            self.image_types.append(image_type)
            self.publishers.append(self.node.create_publisher(
                image_type, image_topic, qos,
                event_callbacks=PublisherEventCallbacks(
                    matched=lambda info, e=published: info.current_count > 0 and e.set())))
            self.node.create_subscription(
                Image, labels_topic, functools.partial(self._on_labels, index), qos,
                event_callbacks=SubscriptionEventCallbacks(
                    matched=lambda info, e=collected: info.current_count > 0 and e.set(),
                    message_lost=self._on_lost))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def matched(self) -> bool:
        return all(e.is_set() for e in self._matched)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_labels(self, camera: int, msg: Any) -> None:
        received_ns = self.now_ns()
        labels = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width]
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.results.put((camera, received_ns, stamp_ns, labels))

    def _on_lost(self, info: Any) -> None:
        self.collector_lost += info.total_count_change

    def _on_diagnostics(self, msg: Any) -> None:
        statuses = {s.name: parse_diagnostics({kv.key: kv.value for kv in s.values})
                    for s in msg.status if s.name.startswith(NODE_STATUS_NAME)}
        if statuses:
            with self._diagnostics_cond:
                self._diagnostics = (self._diagnostics[0] + 1, statuses)
                self._diagnostics_cond.notify_all()

    def diagnostics(self, after: int = 0, timeout: float = 0.0) -> tuple[int, dict[str, dict[str, Any]] | None]:
        """The node's newest statuses (name -> parsed) later than sequence number ``after``
        (waiting up to ``timeout``), as (sequence number, statuses); (after, None) when none came."""
        with self._diagnostics_cond:
            self._diagnostics_cond.wait_for(lambda: self._diagnostics[0] > after, timeout)
            if self._diagnostics[0] > after:
                return self._diagnostics
            return after, None


def stamp_message(msg: Any, stamp_ns: int) -> None:
    """Set a message's header stamp."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
