"""``seg_node``: the rclpy adapter around :class:`~seg_perception.scheduler.Scheduler`.

The node declares parameters (with descriptors), creates one subscription and one set of
publishers per camera with their QoS, and publishes results and ``/diagnostics``. What needs no
ROS lives beside the scheduler and is tested without DDS:

* :mod:`~seg_perception.parameter_state`: the values, and the checks of a set request;
* :mod:`~seg_perception.reload`: background model loads and the revert after a failed one;
* :mod:`~seg_perception.frame_conversion`: checks at arrival, conversion (GPU or CPU JPEG decode);
* :mod:`~seg_perception.health`: the health reports (drop ratios and clock status per period);
* :mod:`~seg_perception.log_throttle`: rate-limited, bounded log lines;
* :mod:`~seg_perception.topics`: topic names and the startup checks of a camera configuration;
* :mod:`~seg_perception.scheduler`: slots, worker, batching, frame books, the engine swap.

* With ``cameras`` empty the node serves one camera on ``image_topic`` and publishes
  ``segmentation/labels`` (and colour/overlay/confidence), one status on ``/diagnostics``.
* With ``cameras: [front, left, ...]`` each camera reads ``<camera>.image_topic`` and publishes
  ``<camera>/segmentation/...``; all share one model, and frames of several cameras run as one
  batch. ``/diagnostics`` carries one status per camera and one for the shared engine.

Parameter set requests are validated in the set callback (refused with the reason, nothing
changes) and applied in the post-set callback, once ROS has accepted them: model changes then
load in the background. No callback lets an exception escape, and no tensor code lives here.
The process around the node (signals, exit status) is :mod:`seg_perception.process`.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

from . import params as P
from .engine import OutputRequest, SegmentationEngine, SegmentationResult
from .frame_conversion import FrameConverter, is_compressed
from .health import SINGLE_CAMERA, HealthReporter
from .image_conversion import ImageRejected
from .log_throttle import LogThrottle
from .parameter_state import ParameterState, plain_value
from .params import params_file_problem
from .rclpy_compat import parameter_overrides, set_read_only_parameters
from .reload import EngineFactory, ReloadController, build_engine
from .scheduler import CameraPolicy, Frame, Scheduler
from .shutdown import ShutdownRequested, ShutdownSignals
from .stats import FailureTracker
from .text import one_line
from .topics import CameraTopics, camera_topics, output_topic
from .weights_access import allowed_weights_dirs

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

#: Seconds ``stop`` waits for the worker; the process must be gone within 2 s of a signal.
STOP_TIMEOUT_S = 1.5

#: Seconds between checks for a shutdown request while spinning (bounds the reaction to a signal).
SIGNAL_POLL_S = 0.05

#: What a node that cannot start raises: bad parameters (ours and rclpy's), a model or checkpoint
#: that cannot load, a missing file. Anything else is a bug and keeps its traceback.
STARTUP_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError, ParameterException)

#: Unknown parameter names warned about one by one; the rest are counted.
MAX_UNKNOWN_REPORTED = 10


@dataclass
class CameraIO:
    """One camera's subscription and publishers."""

    camera: str
    subscription: Subscription
    labels: Publisher
    color: Publisher
    overlay: Publisher
    confidence: Publisher


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


def _camera_descriptor(name: str, spec: P.CameraParamSpec) -> ParameterDescriptor:
    """Overrides are declared unset (any type, checked by the set callback against the
    node-wide parameter's type); unset means "follow the node-wide value"."""
    return ParameterDescriptor(
        name=name, description=spec.description, dynamic_typing=spec.name != "image_topic",
        additional_constraints="" if spec.dynamic else "takes effect on restart",
    )


class SegmentationNode(Node):
    """Subscribes to camera images, publishes per-pixel class ids and health diagnostics.

    ``engine_factory`` replaces :class:`SegmentationEngine` (startup and runtime reloads); the
    reliability tests use it to run thousands of frames through the real ROS path quickly.
    ``scheduler`` is public: tests and tools read its books and statistics and set its
    ``before_inference`` fault hook there.
    """

    def __init__(self, *, engine_factory: EngineFactory | None = None, **kwargs: Any) -> None:
        super().__init__("seg_node", **kwargs)
        try:
            self._setup(engine_factory or SegmentationEngine)
        except BaseException:
            Node.destroy_node(self)  # nothing half-configured stays registered in the graph
            raise

    @property
    def values(self) -> dict[str, Any]:
        """The node-wide parameter values in effect."""
        return self.parameters.values

    @property
    def camera_values(self) -> dict[str, dict[str, Any]]:
        """Per-camera overrides in effect; None = follows the node-wide parameter."""
        return self.parameters.camera_values

    # -- setup --------------------------------------------------------------------------------
    def _declare(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Declare every parameter; the node-wide values and the per-camera overrides."""
        values = {}
        for spec in P.PARAMS:
            # An empty list has no ROS type: declare it typed (it stays unset until given).
            default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
            declared = plain_value(self.declare_parameter(spec.name, default, _descriptor(spec)).value)
            values[spec.name] = plain_value(spec.default) if declared is None else declared
        self.cameras: tuple[str, ...] = tuple(values["cameras"])
        camera_values: dict[str, dict[str, Any]] = {}
        if P.camera_name_problems(self.cameras):
            return values, camera_values
        for camera in self.cameras:
            overrides = {}
            for spec in P.CAMERA_PARAMS:
                name = f"{camera}.{spec.name}"
                default = P.default_camera_topic(camera) if spec.name == "image_topic" else None
                overrides[spec.name] = plain_value(self.declare_parameter(name, default,
                                                                          _camera_descriptor(name, spec)).value)
            camera_values[camera] = overrides
        return values, camera_values

    def _resolve_topic(self, topic: str) -> str:
        try:
            return self.resolve_topic_name(topic)
        except RuntimeError as exc:  # rclpy's RCLError: not a valid topic name
            raise ValueError(str(exc)) from None

    def _setup(self, engine_factory: EngineFactory) -> None:
        values, camera_values = self._declare()
        self._warn_unknown_parameters()
        config = {**values, **{f"{camera}.{name}": value for camera, overrides in camera_values.items()
                               for name, value in overrides.items() if value is not None}}
        problems = P.validate_config(config, resolve=self._resolve_topic)
        if problems:
            raise ValueError("invalid seg_node parameters: " + "; ".join(problems))
        self.parameters = ParameterState(values, camera_values,
                                         allowed_weights_dirs(values["weights"], values["weights_dirs"]))
        ids = self.cameras or (SINGLE_CAMERA,)
        topics, _ = camera_topics(ids, self.parameters.camera_value, self._resolve_topic)

        self._duplicate_seen = False
        self._log = LogThrottle(self._ros_log)
        self.converter = FrameConverter(
            max_pixels=lambda: self.values["max_pixels"], log=self._log,
            device=lambda: self.scheduler.engine.device if self.scheduler.engine is not None else None)
        self.scheduler = Scheduler(
            ids, convert=self.converter.convert, publish=self._publish, policy=self._policy,
            clock_ns=lambda: self.get_clock().now().nanoseconds,
            batch_wait_ms=values["batch_wait_ms"], max_batch_size=values["max_batch_size"],
            latency_window=values["latency_window"],
            failures=FailureTracker(values["failure_error_count"], values["failure_window_s"]),
            log=self._log, clock_mismatch_s=values["clock_mismatch_s"],
            convert_batch=self.converter.convert_batch,
        )
        self.health = HealthReporter(self.scheduler)
        self.reload = ReloadController(
            self.scheduler, self.parameters, functools.partial(build_engine, engine_factory),
            set_parameters=lambda revert: self.set_parameters([Parameter(n, value=v) for n, v in revert.items()]),
            on_loaded=self._publish_labels, log=self._log)
        try:
            self.reload.start()
            self._publish_labels()
        except Exception as exc:  # any load failure is reported the same way
            if values["fail_fast"]:
                raise
            self.scheduler.startup_failed(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"model not loaded, serving nothing: {self.scheduler.startup_error}")
        if self.scheduler.engine is not None and not values["weights"]:
            self.get_logger().warning(
                "NO WEIGHTS CONFIGURED: the model has random weights and its labels are meaningless"
            )

        self.camera_io = {camera: self._camera_io(camera, topics[camera]) for camera in ids}
        first = self.camera_io[ids[0]]
        #: The first camera's (in single-camera mode the only) subscription and labels publisher.
        self.subscription, self.labels_pub = first.subscription, first.labels
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        # On the steady clock: under use_sim_time a ROS-time timer stops whenever the bag pauses,
        # and health reports (a silent camera above all) must not.
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stopped = False
        self.scheduler.start()
        engine = self.scheduler.engine.description if self.scheduler.engine else {"model": "(not loaded)"}
        for io in self.camera_io.values():
            self.get_logger().info(f"segmenting {io.subscription.topic_name} -> {io.labels.topic_name}")
        self.get_logger().info(f"one model for {len(ids)} camera(s): {engine}")

    def _camera_io(self, camera: str, topics: CameraTopics) -> CameraIO:
        reliability = (
            ReliabilityPolicy.RELIABLE if self.parameters.camera_value(camera, "qos_reliability") == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        input_qos = QoSProfile(depth=self.values["qos_depth"], reliability=reliability,
                               history=HistoryPolicy.KEEP_LAST)
        # image_transport's compressed plugin publishes on <base topic>/compressed (topics.subscribed)
        kind = CompressedImage if self.parameters.camera_value(camera, "image_transport") == "compressed" else Image
        subscription = self.create_subscription(kind, topics.subscribed, functools.partial(self._on_frame, camera),
                                                input_qos)
        publishers = {name: self.create_publisher(Image, output_topic(camera, name), OUTPUT_QOS)
                      for name in ("labels", "color", "overlay", "confidence")}
        return CameraIO(camera=camera, subscription=subscription, **publishers)

    def _warn_unknown_parameters(self) -> None:
        """Overrides (params file, ``-p``) that name no declared parameter are typos: rclpy
        ignores them silently, so name each with the closest known parameter (or camera)."""
        unknown = [name for name in parameter_overrides(self) if not self.has_parameter(name)]
        known = [spec.name for spec in P.PARAMS if not spec.read_only]
        for name in unknown[:MAX_UNKNOWN_REPORTED]:
            self.get_logger().warning(P.unknown_parameter_message(name, known, self.cameras))
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

    def _ros_log(self, level: int, message: str) -> None:
        """Where the (throttled, bounded) reports of the scheduler and the node's parts go."""
        logger = self.get_logger()
        if level >= logging.ERROR:
            logger.error(message)
        elif level >= logging.WARNING:
            logger.warning(message)
        else:
            logger.info(message)

    # -- frames -------------------------------------------------------------------------------
    def _on_frame(self, camera: str, msg: Image | CompressedImage) -> None:
        """Check a frame's fields (a compressed one's header bytes too: size against
        ``max_pixels``, truncation) without allocating or decoding, and hand it to the scheduler;
        conversion runs in the worker, so a frame that is superseded is never converted. A
        rejected or malformed frame is counted and logged (it must not stop the executor)."""
        what = "compressed frame" if is_compressed(msg) else "frame"
        try:
            self.converter.check(msg)
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        except ImageRejected as exc:
            self.scheduler.reject(camera, exc.reason)
            self._log(logging.WARNING, f"rejected {what} ({exc.reason}) of camera {camera!r}: {exc}")
            return
        except Exception as exc:
            self.scheduler.reject(camera, "malformed")
            self._log(logging.ERROR, f"rejected {what} (malformed) of camera {camera!r}: {exc!r}")
            return
        self.scheduler.put(camera, msg, stamp_ns, self.get_clock().now().nanoseconds)

    def _policy(self, camera: str) -> CameraPolicy:
        """Age limit and outputs for the camera's next frame: an optional output is computed only
        when enabled and someone subscribes to it."""
        io = self.camera_io[camera]
        wanted = functools.partial(self.parameters.camera_value, camera)
        return CameraPolicy(
            max_age_ms=wanted("max_age_ms"),
            outputs=OutputRequest(
                color=wanted("publish_color") and io.color.get_subscription_count() > 0,
                overlay=wanted("publish_overlay") and io.overlay.get_subscription_count() > 0,
                confidence=wanted("publish_confidence") and io.confidence.get_subscription_count() > 0,
                overlay_alpha=self.values["overlay_alpha"],
            ),
        )

    def _publish(self, frame: Frame, result: SegmentationResult) -> None:
        """Publish a frame's results with the header of the frame they were computed from."""
        io = self.camera_io[frame.camera]
        header = frame.payload.header
        io.labels.publish(_image(header, result.labels, "mono8"))
        if result.color is not None:
            io.color.publish(_image(header, result.color, "rgb8"))
        if result.overlay is not None:
            io.overlay.publish(_image(header, result.overlay, "rgb8"))
        if result.confidence is not None:
            io.confidence.publish(_image(header, result.confidence, "mono8"))

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._check_duplicate_name()
            self.diagnostics_pub.publish(self.diagnostics())
        except Exception as exc:  # diagnostics must never take the node down
            self._log(logging.ERROR, f"diagnostics failed: {exc!r}")

    def diagnostics(self) -> DiagnosticArray:
        """The current health report: one status in single-camera mode; with ``cameras`` one
        per camera plus one for the shared engine. Each call starts a new reporting period."""
        fqn = self.get_fully_qualified_name()
        topics = {camera: io.subscription.topic_name for camera, io in self.camera_io.items()}
        array = DiagnosticArray(status=[
            DiagnosticStatus(level=bytes([s.report.level]), name=f"seg_perception: {fqn}{s.name_suffix}",
                             message=s.report.message, hardware_id=s.hardware_id,
                             values=[KeyValue(key=k, value=v) for k, v in s.report.values.items()])
            for s in self.health.statuses(self.values, self.cameras, topics)
        ])
        array.header.stamp = self.get_clock().now().to_msg()
        return array

    # -- parameters ---------------------------------------------------------------------------
    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        """As :meth:`Node.set_parameters`; a model load finishing meanwhile waits until all the
        parameters are set, so each is validated against the same loading state."""
        with self.reload.lock:
            return super().set_parameters(parameter_list)

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        with self.reload.lock:
            return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Validate only: refuse invalid changes with the reason; nothing changes here."""
        if self.reload.reverting():
            return SetParametersResult(successful=True, reason="reverted after a failed load")
        check = self.parameters.check([(p.name, p.value) for p in changes], loading=self.scheduler.loading)
        return SetParametersResult(successful=check.successful, reason=check.reason)

    def _after_set_parameters(self, changes: list[Parameter]) -> None:
        """Apply accepted changes; a model change starts a background load."""
        values = self.parameters.apply([(p.name, p.value) for p in changes]).values
        self.scheduler.configure(
            batch_wait_ms=values["batch_wait_ms"], max_batch_size=values["max_batch_size"],
            clock_mismatch_s=values["clock_mismatch_s"], failure_error_count=values["failure_error_count"],
            failure_window_s=values["failure_window_s"])
        self.reload.parameters_applied()

    def _publish_labels(self) -> None:
        """Point the read-only ``class_names``/``palette`` at the serving model's labels (a
        checkpoint trained on a custom class set records its own)."""
        engine = self.scheduler.engine
        if engine is None:
            return
        params = [Parameter("class_names", value=[str(n) for n in engine.class_names]),
                  Parameter("palette", value=[int(c) for c in np.asarray(engine.palette).reshape(-1)])]
        for param in params:  # known values first, so the set callbacks see no change to refuse
            self.values[param.name] = param.value
        set_read_only_parameters(self, params)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the worker (it finishes the batch it holds); frames still waiting are counted as
        dropped (``shutdown``). Idempotent; waits at most ``timeout`` seconds in all."""
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        started = time.monotonic()
        finished = self.scheduler.stop(timeout)
        books = self.scheduler.accounting.snapshot()
        # A frame still in an inference that outlasted the timeout is not waited for: the
        # process entry point ends without finalising the interpreter (see shutdown.py).
        abandoned = "" if finished else f", {books['in_flight']} in an unfinished inference"
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
    """Run ``seg_node`` until a signal asks it to stop; the exit status. Called by
    :func:`seg_perception.process.main`, which installed ``signals``.

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
        print(f"seg_node: cannot start ROS: {one_line(exc)}", file=sys.stderr)
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
        print(f"seg_node: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit("seg_node: start it with `ros2 run seg_perception seg_node` or `python -m seg_perception.process`")
