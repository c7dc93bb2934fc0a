"""``seg_node``: the rclpy adapter around :class:`~seg_perception.engine.SegmentationEngine`.

Responsibilities, one per callback or thread:

* the image subscription validates a frame's fields and stores it as the newest frame (latest
  frame wins: a frame replaced before the worker takes it is counted as dropped, ``superseded``);
* a worker thread takes the newest frame, drops it if it is older than ``max_age_ms``, runs the
  engine and publishes labels (plus colour/overlay/confidence when enabled and subscribed) with
  the header of the frame they were computed from;
* a loader thread builds a new engine when a model parameter changes, while the old engine keeps
  serving; the swap is one reference assignment, and a failed load keeps the old engine and
  reverts the parameters;
* a timer publishes ``/diagnostics``;
* the parameter callback validates runtime changes.

Every received frame ends up processed, dropped with a reason, or rejected with a reason, and
the counts are on ``/diagnostics``. No callback lets an exception escape: a crash would stop the
executor, and a car needs the node to keep serving. No tensor code lives here.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from . import params as P
from .diagnostics import Thresholds, build_report
from .engine import STAGES, EngineConfig, OutputRequest, SegmentationEngine, recover_from_failure
from .image_conversion import ImageRejected, check_image, image_msg_to_rgb
from .params import bounded, params_file_problem
from .process import ShutdownRequested, ShutdownSignals, exit_now
from .stats import FailureTracker, FrameAccounting, LatencyWindow, RateMeter

try:  # A ROS install provides cv_bridge; the PyPI wheels do not.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    CvBridge = None

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

#: Builds an engine from its configuration; tests pass a fake one to make long runs fast.
EngineFactory = Callable[[EngineConfig], SegmentationEngine]

RELOAD_PARAMS = tuple(spec.name for spec in P.PARAMS if spec.reload)

#: Seconds ``stop`` waits for the worker; the process must be gone within 2 s of SIGINT/SIGTERM.
STOP_TIMEOUT_S = 1.5


#: Seconds between checks for a shutdown request while spinning (bounds the reaction to a signal).
SIGNAL_POLL_S = 0.05

#: What a node that cannot start raises: bad parameters (ours and rclpy's), a model or checkpoint
#: that cannot load, a missing file. Anything else is a bug and keeps its traceback.
STARTUP_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError, ParameterException)

#: Unknown parameter names warned about one by one; the rest are counted.
MAX_UNKNOWN_REPORTED = 10

#: Frame size (H, W) used to warm an engine up when ``inference_size`` follows the frames.
WARMUP_SIZE = (64, 64)


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
        """Store ``frame``; return the frame that will never be processed, if any: the one it
        replaced, or ``frame`` itself once the slot is closed."""
        with self._cond:
            if self._closed:
                return frame
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
        """Refuse further frames; return the waiting one, if any (it will not be processed)."""
        with self._cond:
            self._closed = True
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame


def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    if spec.reload:
        constraints = "runtime: the model is rebuilt in the background and swapped in when ready"
    else:
        constraints = "" if spec.dynamic or spec.read_only else "takes effect on restart"
    descriptor = ParameterDescriptor(
        name=spec.name, description=spec.description, read_only=spec.read_only,
        additional_constraints=constraints,
    )
    if spec.range is not None and isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.range[0], to_value=spec.range[1])]
    elif spec.range is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
    return descriptor


def _plain(value: Any) -> Any:
    """ROS array parameters arrive as ``array.array``; keep lists so values compare equal."""
    return list(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else value


def _model_label(values: dict[str, Any]) -> str:
    variant = f"/{values['variant']}" if values["variant"] else ""
    return f"{values['model']}{variant} ({values['weights'] or 'random init'})"


class SegmentationNode(Node):
    """Subscribes to camera images, publishes per-pixel class ids and health diagnostics.

    ``engine_factory`` replaces :class:`SegmentationEngine` (startup and runtime reloads); the
    reliability tests use it to run thousands of frames through the real ROS path quickly.
    ``before_inference`` is a fault-injection hook for tests: when set, the worker calls it with
    each frame's RGB array just before inference, and whatever it raises counts as that frame's
    inference failure.
    """

    def __init__(self, *, engine_factory: EngineFactory | None = None, **kwargs: Any) -> None:
        super().__init__("seg_node", **kwargs)
        try:
            self._setup(engine_factory or SegmentationEngine)
        except BaseException:
            Node.destroy_node(self)  # nothing half-configured stays registered in the graph
            raise

    def _setup(self, engine_factory: EngineFactory) -> None:
        for spec in P.PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.values = {spec.name: _plain(self.get_parameter(spec.name).value) for spec in P.PARAMS}
        self._warn_unknown_parameters()
        problems = P.validate_params(self.values)
        if problems:
            raise ValueError("invalid seg_node parameters: " + "; ".join(problems))

        self.accounting = FrameAccounting()
        window = self.values["latency_window"]
        self.stage_latency = {stage: LatencyWindow(window) for stage in STAGES}
        self.end_to_end = LatencyWindow(window)
        self.input_rate, self.output_rate = RateMeter(), RateMeter()
        self.failures = FailureTracker(self.values["failure_error_count"], self.values["failure_window_s"])
        self.before_inference: Callable[[np.ndarray], None] | None = None
        self._bridge: Any = None
        self._last_report = (0, 0)
        self._engine_factory = engine_factory
        self._config_lock = threading.RLock()
        self._loader: threading.Thread | None = None
        self._loading: str | None = None
        self._reverting: dict[str, Any] | None = None
        self._serving = {name: self.values[name] for name in RELOAD_PARAMS}
        self.startup_error: str | None = None
        self._duplicate_seen = False
        self.reload_error: str | None = None
        self.engine: SegmentationEngine | None = None
        try:
            self.engine = self._build_engine(self.values)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            if self.values["fail_fast"]:
                raise
            self.startup_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"model not loaded, serving nothing: {self.startup_error}")
        if self.engine is not None and not self.values["weights"]:
            self.get_logger().warning(
                "NO WEIGHTS CONFIGURED: the model has random weights and its labels are meaningless"
            )

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
            f"segmenting {self.subscription.topic_name} with {engine} -> {self.labels_pub.topic_name}"
        )

    def _warn_unknown_parameters(self) -> None:
        """Overrides (params file, ``-p``) that name no declared parameter are typos: rclpy
        ignores them silently, so name each with the closest known parameter."""
        overrides = getattr(self, "_parameter_overrides", {})  # rclpy: the overrides for this node
        unknown = [name for name in overrides if not self.has_parameter(name)]
        known = [spec.name for spec in P.PARAMS if not spec.read_only]
        for name in unknown[:MAX_UNKNOWN_REPORTED]:
            self.get_logger().warning(P.unknown_parameter_message(name, known))
        if len(unknown) > MAX_UNKNOWN_REPORTED:
            self.get_logger().warning(f"... and {len(unknown) - MAX_UNKNOWN_REPORTED} more unknown parameters")

    def _check_duplicate_name(self) -> None:
        """Warn (once per occurrence) when another node has our fully qualified name: both
        would publish the same /diagnostics entry and tools could not tell them apart."""
        me = (self.get_name(), self.get_namespace())
        duplicate = sum(1 for node in self.get_node_names_and_namespaces() if tuple(node) == me) > 1
        if duplicate and not self._duplicate_seen:
            self.get_logger().warning(
                f"another node named {self.get_fully_qualified_name()} is running in this ROS domain: "
                f"their /diagnostics entries collide; give one a different name or namespace"
            )
        self._duplicate_seen = duplicate

    def _build_engine(self, values: dict[str, Any]) -> SegmentationEngine:
        """Build and warm up an engine, so its first real frame is not the one paying for lazy
        initialisation (seconds on a cold CPU, cuDNN autotuning on a GPU)."""
        config = P.engine_config(values)
        engine = self._engine_factory(config)
        warmup = getattr(engine, "warmup", None)
        if warmup is not None:
            warmup(*(config.inference_size or WARMUP_SIZE))
        return engine

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
        except Exception as exc:  # noqa: BLE001 - a malformed message must not stop the executor
            self.accounting.reject("malformed")
            self.get_logger().error(f"rejected frame (malformed): {exc!r}", throttle_duration_sec=5.0)
            return
        if self.engine is None:
            self.accounting.drop("model_not_loaded")
            return
        frame = _Frame(msg, self.get_clock().now().nanoseconds)
        lost = self._slot.put(frame)
        if lost is frame:
            self.accounting.drop("shutdown")
        elif lost is not None:
            self.accounting.drop("superseded")

    # -- worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        """Take newest frames until shutdown; on CUDA keep one frame in flight for overlap."""
        pending: tuple[_Frame, SegmentationEngine, Any] | None = None
        while not self._stop.is_set():
            try:
                frame = self._slot.take(timeout=0.0 if pending else 0.1)
                started = self._start(frame) if frame is not None else None
                if pending is not None:
                    self._finish(*pending)
                pending = started
                if pending is not None and not pending[1].asynchronous:
                    self._finish(*pending)
                    pending = None
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any bug in a frame
                self.get_logger().error(f"worker error: {exc!r}", throttle_duration_sec=5.0)
        if pending is not None:
            self._finish(*pending)

    def _age_ms(self, frame: _Frame) -> float:
        stamp = frame.msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        return (self.get_clock().now().nanoseconds - (stamp_ns or frame.received_ns)) / 1e6

    def _start(self, frame: _Frame) -> tuple[_Frame, SegmentationEngine, Any] | None:
        """Submit ``frame``; on any failure it is accounted for here and None is returned."""
        try:
            return self._submit(frame)
        except ImageRejected as exc:  # max_pixels lowered since the subscription checked it
            self.accounting.reject(exc.reason)
        except Exception as exc:  # noqa: BLE001 - a frame's failure must not stop the node
            if self._stop.is_set():
                self.accounting.drop("shutdown")
            else:
                self._fail(exc)
        return None

    def _submit(self, frame: _Frame) -> tuple[_Frame, SegmentationEngine, Any] | None:
        engine = self.engine  # one engine per frame, even if a swap happens meanwhile
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
        rgb = self._to_rgb(frame.msg)
        if self.before_inference is not None:
            self.before_inference(rgb)
        return frame, engine, engine.submit(rgb, outputs)

    def _to_rgb(self, msg: Image) -> np.ndarray:
        """Our checks always run first (cv_bridge trusts the header fields); the conversion itself
        uses cv_bridge when a ROS install provides it, else our zero-copy conversion."""
        if CvBridge is None:
            return image_msg_to_rgb(msg, self.values["max_pixels"])
        check_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
                    self.values["max_pixels"])
        if self._bridge is None:
            self._bridge = CvBridge()
        return self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")

    def _finish(self, frame: _Frame, engine: SegmentationEngine, pending: Any) -> None:
        try:
            result = pending.result()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        header = frame.msg.header
        try:
            self.labels_pub.publish(_image(header, result.labels, "mono8"))
            if result.color is not None:
                self.color_pub.publish(_image(header, result.color, "rgb8"))
            if result.overlay is not None:
                self.overlay_pub.publish(_image(header, result.overlay, "rgb8"))
            if result.confidence is not None:
                self.confidence_pub.publish(_image(header, result.confidence, "mono8"))
        except Exception as exc:  # noqa: BLE001 - e.g. the context shut down under us
            self.accounting.drop("shutdown" if self._stop.is_set() else "publish_error")
            if not self._stop.is_set():
                self.get_logger().error(f"publish failed, frame dropped: {exc!r}", throttle_duration_sec=5.0)
            return
        self.accounting.process()
        self.output_rate.tick()
        self.failures.success()
        for stage, ms in result.timings_ms.items():
            self.stage_latency[stage].add(ms)
        self.end_to_end.add(self._age_ms(frame))

    def _fail(self, exc: Exception) -> None:
        self.accounting.drop(recover_from_failure(exc))
        self.failures.failure(f"{type(exc).__name__}: {exc}")
        self.get_logger().error(f"inference failed, frame dropped: {type(exc).__name__}: {exc}",
                                throttle_duration_sec=5.0)

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._check_duplicate_name()
            self.diagnostics_pub.publish(self.diagnostics())
        except Exception as exc:  # noqa: BLE001 - diagnostics must never take the node down
            self.get_logger().error(f"diagnostics failed: {exc!r}", throttle_duration_sec=5.0)

    def diagnostics(self) -> DiagnosticArray:
        """The current health report; the drop ratio covers frames since the previous call."""
        books = self.accounting.snapshot()
        lost = books["dropped_total"] + books["rejected_total"]
        previous_received, previous_lost = self._last_report
        self._last_report = (books["received"], lost)
        engine = self.engine
        report = build_report(
            stages={stage: w.summary() for stage, w in self.stage_latency.items()},
            end_to_end=self.end_to_end.summary(),
            accounting=books,
            interval_received=books["received"] - previous_received,
            interval_lost=lost - previous_lost,
            input_rate_hz=self.input_rate.rate(),
            output_rate_hz=self.output_rate.rate(),
            engine=engine.description if engine else None,
            thresholds=Thresholds(
                self.values["latency_warn_ms"], self.values["latency_error_ms"],
                self.values["drop_warn_ratio"], self.values["drop_error_ratio"],
            ),
            consecutive_failures=self.failures.consecutive,
            failure_burst=self.failures.burst(),
            last_error=self.failures.last_error,
            gpu_memory_mb=engine.memory_allocated_mb() if engine else None,
            startup_error=self.startup_error,
            model_loading=self._loading,
            reload_error=self.reload_error,
        )
        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f"seg_perception: {self.get_fully_qualified_name()}",
            message=report.message,
            hardware_id=str(engine.description["device"]) if engine else "",
            values=[KeyValue(key=k, value=v) for k, v in report.values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        return array

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Accept valid changes; refuse the rest with the reason. Model changes load in the
        background (one at a time) and the request returns at once."""
        with self._config_lock:
            updated = dict(self.values)
            reload = False
            for change in changes:
                spec = P.PARAMS_BY_NAME.get(change.name)
                if spec is None:
                    continue  # parameters this node does not own (e.g. use_sim_time)
                value = _plain(change.value)
                if value == self.values[change.name]:
                    continue
                if not (spec.dynamic or spec.reload):
                    return SetParametersResult(successful=False,
                                               reason=f"{change.name} takes effect only on restart")
                reload |= spec.reload
                updated[change.name] = value
            if self._reverting is not None and threading.current_thread() is self._loader:
                # the loader putting back the parameters of the model that is still serving
                self.values = updated
                return SetParametersResult(successful=True, reason="reverted after a failed load")
            problems = P.validate_params(updated)
            if problems:
                return SetParametersResult(successful=False, reason="; ".join(problems))
            if reload and self._loading is not None:
                return SetParametersResult(
                    successful=False, reason=f"model {self._loading} is still loading; retry when it is done"
                )
            self.values = updated
            self.failures.configure(updated["failure_error_count"], updated["failure_window_s"])
            if not reload:
                return SetParametersResult(successful=True)
            self._loading = _model_label(updated)
            self._loader = threading.Thread(
                target=self._reload, args=(dict(updated),), name="seg_model_loader", daemon=True
            )
            self._loader.start()
            return SetParametersResult(
                successful=True,
                reason=f"loading {self._loading} in the background; the current model serves until then",
            )

    def _reload(self, values: dict[str, Any]) -> None:
        """Build the engine for ``values``; swap it in, or keep the old one and revert."""
        label = _model_label(values)
        try:
            engine = self._build_engine(values)
        except Exception as exc:  # noqa: BLE001 - every load failure is reported, none kills us
            reason = f"{type(exc).__name__}: {exc}"
            serving = _model_label(self._serving) if self.engine is not None else "nothing"
            self.reload_error = f"{label}: {reason}"
            self.get_logger().error(f"could not load {label}: {reason}; still serving {serving}")
            self._revert()
            return
        with self._config_lock:
            self._loading = None
            if self._stop.is_set():
                return
            self.engine = engine  # the swap: the worker picks it up with its next frame
            self._serving = {name: values[name] for name in RELOAD_PARAMS}
            self.startup_error = self.reload_error = None
            self.failures.success()
        self.get_logger().info(f"now serving {label}: {engine.description}")

    def _revert(self) -> None:
        """Put the model parameters back to what is serving, so they never describe a model
        that is not running."""
        with self._config_lock:
            revert = {n: v for n, v in self._serving.items() if self.values[n] != v}
            self._reverting = revert
        try:
            if revert and not self._stop.is_set():
                self.set_parameters([Parameter(n, value=v) for n, v in revert.items()])
        except Exception as exc:  # noqa: BLE001 - e.g. the node is being destroyed
            self.get_logger().warning(f"could not revert parameters: {exc!r}")
        finally:
            with self._config_lock:
                self._reverting = None
                self._loading = None

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the worker (it finishes the frame it holds); a frame still waiting is counted as
        dropped (``shutdown``). Idempotent; waits at most ``timeout`` seconds in all."""
        if self._stop.is_set():
            return
        started = time.monotonic()
        self._stop.set()
        if self._slot.close() is not None:
            self.accounting.drop("shutdown")
        self._worker.join(timeout)
        loader = self._loader
        if loader is not None:
            loader.join(max(0.0, started + timeout - time.monotonic()))
        books = self.accounting.snapshot()
        # A frame still in an inference that outlasted the timeout is not waited for: the
        # process entry point ends without finalising the interpreter (see process.py).
        abandoned = f", {books['in_flight']} in an unfinished inference" if self._worker.is_alive() else ""
        self.get_logger().info(
            f"stopped in {(time.monotonic() - started) * 1e3:.0f} ms: {books['received']} frames received, "
            f"{books['processed']} processed, dropped {books['dropped']}, rejected {books['rejected']}{abandoned}"
        )

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


def run(args: list[str] | None, signals: ShutdownSignals) -> int:
    """Run ``seg_node`` until SIGINT/SIGTERM; the exit status.

    0 after a signal (at any moment: startup, model loading, inference, twice in a row); 1 when
    the node cannot start (invalid parameters, a model that fails to load with ``fail_fast``);
    2 when ROS cannot start (a missing or malformed params file). Errors are one line. The
    node stops and logs its books while the ROS context is still valid; the context goes last.
    """
    problem = params_file_problem(args if args is not None else sys.argv[1:])
    if problem:
        print(f"seg_node: {problem}", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as exc:  # rcl's RCLError: arguments it could not parse
        print(f"seg_node: cannot start ROS: {bounded(str(exc))}", file=sys.stderr)
        return 2
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = SegmentationNode()
        executor.add_node(node)
        signals.running()
        while not signals.requested.is_set():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
    except ShutdownRequested as exc:  # whatever was built is torn down below
        print(f"seg_node: {exc} during startup, stopped before serving", file=sys.stderr)
    except ExternalShutdownException:
        pass  # the context was shut down by someone else (e.g. a launch system in-process)
    except STARTUP_ERRORS as exc:
        print(f"seg_node: {type(exc).__name__}: {bounded(str(exc))}", file=sys.stderr)
        return 1
    finally:
        signals.stopping()
        if node is not None:
            node.stop()  # the worker stops and the books are logged while rosout still works
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown(timeout_sec=0.0)
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    """Console entry point (``ros2 run seg_perception seg_node``); see :func:`run`.

    As the process entry (``args`` None) the process ends here through
    :func:`~seg_perception.process.exit_now`, never by interpreter finalisation, which can abort
    while a torch operator is still running in the worker thread.
    """
    signals = ShutdownSignals().install()
    try:
        code = run(args, signals)
    except ShutdownRequested:
        code = 0
    if args is None:
        exit_now(code)
    signals.restore()
    return code


if __name__ == "__main__":
    main()
