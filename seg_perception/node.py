"""``seg_node``: the rclpy adapter around :class:`~seg_perception.engine.SegmentationEngine`.

Responsibilities, one per callback:

* the image subscription validates a frame's fields and stores it as the newest frame (latest
  frame wins: a frame replaced before the worker takes it is counted as dropped, ``superseded``);
* a worker thread takes the newest frame, drops it if it is older than ``max_age_ms``, runs the
  engine and publishes labels (plus colour/overlay/confidence when enabled and subscribed);
* a timer publishes ``/diagnostics``;
* the parameter callback validates runtime changes.

Every received frame ends up processed, dropped with a reason, or rejected with a reason, and
the counts are on ``/diagnostics``. No tensor code lives here.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from . import params as P
from .diagnostics import Thresholds, build_report
from .engine import STAGES, OutputRequest, SegmentationEngine
from .image_conversion import ImageRejected, check_image, image_msg_to_rgb
from .stats import FrameAccounting, LatencyWindow, RateMeter

try:  # A ROS install provides cv_bridge; the PyPI wheels do not.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    CvBridge = None

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


@dataclass
class _Frame:
    msg: Image
    received_ns: int


class LatestFrameSlot:
    """A one-frame mailbox between the subscription and the worker."""

    def __init__(self) -> None:
        self._frame: _Frame | None = None
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: _Frame) -> _Frame | None:
        """Store ``frame``; return the frame it replaced (never processed), if any."""
        with self._cond:
            replaced, self._frame = self._frame, frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> _Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> _Frame | None:
        with self._cond:
            self._closed = True
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame


def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        read_only=spec.read_only,
        additional_constraints="" if spec.dynamic or spec.read_only else "takes effect on restart",
    )
    if spec.range is not None and isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.range[0], to_value=spec.range[1])]
    elif spec.range is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
    return descriptor


class SegmentationNode(Node):
    """Subscribes to camera images, publishes per-pixel class ids and health diagnostics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("seg_node", **kwargs)
        for spec in P.PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.values = {spec.name: self.get_parameter(spec.name).value for spec in P.PARAMS}
        problems = P.validate_params(self.values)
        if problems:
            raise ValueError("invalid seg_node parameters: " + "; ".join(problems))

        self.accounting = FrameAccounting()
        window = self.values["latency_window"]
        self.stage_latency = {stage: LatencyWindow(window) for stage in STAGES}
        self.end_to_end = LatencyWindow(window)
        self.input_rate, self.output_rate = RateMeter(), RateMeter()
        self.consecutive_failures = 0
        self._last_report = (0, 0)
        self.startup_error: str | None = None
        self.engine: SegmentationEngine | None = None
        try:
            self.engine = SegmentationEngine(P.engine_config(self.values))
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            if self.values["fail_fast"]:
                raise
            self.startup_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"model not loaded, serving nothing: {self.startup_error}")
        if self.engine is not None and not self.values["weights"]:
            self.get_logger().warning(
                "NO WEIGHTS CONFIGURED: the model has random weights and its labels are meaningless"
            )
        self._bridge = CvBridge() if CvBridge is not None else None

        self.labels_pub = self.create_publisher(Image, "segmentation/labels", OUTPUT_QOS)
        self.color_pub = self.create_publisher(Image, "segmentation/color", OUTPUT_QOS)
        self.overlay_pub = self.create_publisher(Image, "segmentation/overlay", OUTPUT_QOS)
        self.confidence_pub = self.create_publisher(Image, "segmentation/confidence", OUTPUT_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        reliability = (
            ReliabilityPolicy.RELIABLE if self.values["qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        input_qos = QoSProfile(depth=self.values["qos_depth"], reliability=reliability,
                               history=HistoryPolicy.KEEP_LAST)
        self.subscription = self.create_subscription(
            Image, self.values["image_topic"], self._on_image, input_qos
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics_timer = self.create_timer(self.values["diagnostics_period"], self._publish_diagnostics)

        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)
        self._worker.start()
        engine = self.engine.description if self.engine else {"model": "(not loaded)"}
        self.get_logger().info(
            f"segmenting {self.subscription.topic_name} with {engine} -> "
            f"{self.labels_pub.topic_name}"
        )

    # -- subscription -------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        self.accounting.receive()
        self.input_rate.tick()
        try:
            check_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
                        self.values["max_pixels"])
        except ImageRejected as exc:
            self.accounting.reject(exc.reason)
            self.get_logger().warning(f"rejected frame ({exc.reason}): {exc}", throttle_duration_sec=5.0)
            return
        if self.engine is None:
            self.accounting.drop("model_not_loaded")
            return
        replaced = self._slot.put(_Frame(msg, self.get_clock().now().nanoseconds))
        if replaced is not None:
            self.accounting.drop("superseded")

    # -- worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        """Take newest frames until shutdown; on CUDA keep one frame in flight for overlap."""
        pending: tuple[_Frame, Any] | None = None
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.0 if pending else 0.1)
            started = self._start(frame) if frame is not None else None
            if pending is not None:
                self._finish(*pending)
            pending = started
            if pending is not None and not self.engine.asynchronous:
                self._finish(*pending)
                pending = None
        if pending is not None:
            self._finish(*pending)

    def _age_ms(self, frame: _Frame) -> float:
        stamp = frame.msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        return (self.get_clock().now().nanoseconds - (stamp_ns or frame.received_ns)) / 1e6

    def _start(self, frame: _Frame) -> tuple[_Frame, Any] | None:
        max_age = self.values["max_age_ms"]
        if max_age > 0 and self._age_ms(frame) > max_age:
            self.accounting.drop("stale")
            return None
        outputs = OutputRequest(
            color=self.values["publish_color"] and self.color_pub.get_subscription_count() > 0,
            overlay=self.values["publish_overlay"] and self.overlay_pub.get_subscription_count() > 0,
            confidence=self.values["publish_confidence"] and self.confidence_pub.get_subscription_count() > 0,
            overlay_alpha=self.values["overlay_alpha"],
        )
        try:
            return frame, self.engine.submit(self._to_rgb(frame.msg), outputs)
        except Exception as exc:  # noqa: BLE001 - a frame's failure must not stop the node
            self._fail(exc)
            return None

    def _to_rgb(self, msg: Image) -> Any:
        if self._bridge is not None:
            return self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        return image_msg_to_rgb(msg, self.values["max_pixels"])

    def _finish(self, frame: _Frame, pending: Any) -> None:
        try:
            result = pending.result()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        header = frame.msg.header
        self.labels_pub.publish(_image(header, result.labels, "mono8"))
        if result.color is not None:
            self.color_pub.publish(_image(header, result.color, "rgb8"))
        if result.overlay is not None:
            self.overlay_pub.publish(_image(header, result.overlay, "rgb8"))
        if result.confidence is not None:
            self.confidence_pub.publish(_image(header, result.confidence, "mono8"))
        self.accounting.process()
        self.output_rate.tick()
        self.consecutive_failures = 0
        for stage, ms in result.timings_ms.items():
            self.stage_latency[stage].add(ms)
        self.end_to_end.add(self._age_ms(frame))

    def _fail(self, exc: Exception) -> None:
        self.accounting.drop("inference_error")
        self.consecutive_failures += 1
        self.get_logger().error(f"inference failed, frame dropped: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=5.0)

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        books = self.accounting.snapshot()
        lost = books["dropped_total"] + books["rejected_total"]
        previous_received, previous_lost = self._last_report
        self._last_report = (books["received"], lost)
        report = build_report(
            stages={stage: w.summary() for stage, w in self.stage_latency.items()},
            end_to_end=self.end_to_end.summary(),
            accounting=books,
            interval_received=books["received"] - previous_received,
            interval_lost=lost - previous_lost,
            input_rate_hz=self.input_rate.rate(),
            output_rate_hz=self.output_rate.rate(),
            engine=self.engine.description if self.engine else None,
            thresholds=Thresholds(
                self.values["latency_warn_ms"], self.values["latency_error_ms"],
                self.values["drop_warn_ratio"], self.values["drop_error_ratio"],
            ),
            consecutive_failures=self.consecutive_failures,
            gpu_memory_mb=self.engine.memory_allocated_mb() if self.engine else None,
            startup_error=self.startup_error,
        )
        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f"seg_perception: {self.get_fully_qualified_name()}",
            message=report.message,
            hardware_id=str(self.engine.description["device"]) if self.engine else "",
            values=[KeyValue(key=k, value=v) for k, v in report.values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Accept valid changes to dynamic parameters; refuse the rest with the reason."""
        updated = dict(self.values)
        for change in changes:
            spec = P.PARAMS_BY_NAME.get(change.name)
            if spec is None:
                continue  # parameters this node does not own (e.g. use_sim_time)
            if change.value == self.values[change.name]:
                continue
            if not spec.dynamic:
                return SetParametersResult(
                    successful=False, reason=f"{change.name} takes effect only on restart"
                )
            updated[change.name] = change.value
        problems = P.validate_params({k: updated[k] for k in updated if k in P.PARAMS_BY_NAME})
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        self.values = updated
        return SetParametersResult(successful=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker; a frame still waiting is counted as dropped (``shutdown``)."""
        self._stop.set()
        if self._slot.close() is not None:
            self.accounting.drop("shutdown")
        self._worker.join(timeout)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def _image(header: Any, array: Any, encoding: str) -> Image:
    """Wrap a uint8 HxW or HxWx3 array as an Image with the input's header."""
    msg = Image(header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                is_bigendian=0)
    msg.step = array.shape[1] * (array.shape[2] if array.ndim == 3 else 1)
    msg.data = array.tobytes()
    return msg


def main(args: list[str] | None = None) -> int:
    """Console entry point (``ros2 run seg_perception seg_node``)."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentationNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - startup failure: say why and exit non-zero
        print(f"seg_node: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
