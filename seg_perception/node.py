"""``seg_node``: the rclpy adapter around :class:`~seg_perception.scheduler.Scheduler`.

The node declares parameters, creates one subscription and one set of publishers per camera,
converts messages and publishes results and ``/diagnostics``. Everything between a received
frame and a result (latest-frame slots, the worker, batching, frame accounting, background model
loads and the swap) is the scheduler's, which is ROS-free and tested without DDS.

* With ``cameras`` empty the node serves one camera on ``image_topic`` and publishes
  ``segmentation/labels`` (and colour/overlay/confidence), one status on ``/diagnostics``.
* With ``cameras: [front, left, ...]`` each camera reads ``<camera>.image_topic`` and publishes
  ``<camera>/segmentation/...``; all share one model, and frames of several cameras run as one
  batch. ``/diagnostics`` carries one status per camera and one for the shared engine.

Parameter set requests are validated in the set callback (refused with the reason, nothing
changes) and applied in the post-set callback, once ROS has accepted them: model changes then
load in the background. The subscription callback checks a frame's fields (cheap, before any
allocation) and hands it to the scheduler; the conversion to RGB runs in the worker
(:meth:`SegmentationNode._to_rgb`). No callback lets an exception escape, and no tensor code
lives here.
"""

from __future__ import annotations

import functools
import logging
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
from .compressed import check_compressed, decode_jpegs_cuda, decode_to_rgb
from .diagnostics import HealthReport, Thresholds, camera_report, engine_report, merge_reports
from .engine import EngineConfig, OutputRequest, SegmentationEngine, SegmentationResult
from .image_conversion import ImageRejected, check_image, image_msg_to_rgb
from .params import params_file_problem
from .process import ShutdownRequested, ShutdownSignals, exit_now
from .scheduler import CameraPolicy, Engine, Frame, Scheduler
from .stats import FailureTracker
from .text import bounded, bounded_repr, one_line

try:  # A ROS install provides cv_bridge; the PyPI wheels do not.
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the installation
    CvBridge = None

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

#: Builds an engine from its configuration; tests pass a fake one to make long runs fast.
EngineFactory = Callable[[EngineConfig], Engine]

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

#: The single-camera node's camera id in the scheduler and its books.
SINGLE_CAMERA = ""

#: Seconds between two log lines that start alike (per-frame problems would flood the log).
LOG_THROTTLE_S = 5.0


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

    # -- setup --------------------------------------------------------------------------------
    def _declare(self) -> list[str]:
        """Declare every parameter; return the problems with their values."""
        self.values = {}
        for spec in P.PARAMS:
            # An empty list has no ROS type: declare it typed (it stays unset until given).
            default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
            declared = _plain(self.declare_parameter(spec.name, default, _descriptor(spec)).value)
            self.values[spec.name] = _plain(spec.default) if declared is None else declared
        problems = P.validate_params(self.values)
        self.cameras: tuple[str, ...] = tuple(self.values["cameras"])
        #: Per-camera overrides; None = follows the node-wide parameter.
        self.camera_values: dict[str, dict[str, Any]] = {}
        if P.camera_name_problems(self.cameras):
            return problems
        for camera in self.cameras:
            overrides = {}
            for spec in P.CAMERA_PARAMS:
                name = f"{camera}.{spec.name}"
                if spec.name == "image_topic":
                    default = P.default_camera_topic(camera)
                else:
                    default = None
                overrides[spec.name] = _plain(self.declare_parameter(name, default,
                                                                     _camera_descriptor(name, spec)).value)
            self.camera_values[camera] = overrides
            problems += P.camera_param_problems(camera, overrides)
        return problems

    def _setup(self, engine_factory: EngineFactory) -> None:
        problems = self._declare()
        self._warn_unknown_parameters()
        ids = self.cameras or (SINGLE_CAMERA,)
        topics = {}
        for camera in ids:
            topic = self._camera_value(camera, "image_topic")
            try:
                topics[camera] = self.resolve_topic_name(topic)
            except RuntimeError as exc:  # rclpy's RCLError: not a valid topic name
                where = f"{camera}.image_topic" if camera else "image_topic"
                problems.append(f"{where} {bounded_repr(topic, 40)} is not a valid topic name ({str(exc)[:120]})")
        if not problems:
            problems += P.duplicate_topic_problems(topics)
        if problems:
            raise ValueError("invalid seg_node parameters: " + "; ".join(problems))

        self._bridge: Any = None
        self._duplicate_seen = False
        self._logged: dict[tuple[int, str], float] = {}
        self._last_report: dict[str, tuple[int, int]] = {}
        self._engine_factory = engine_factory
        self._reverting: threading.Thread | None = None
        #: Held by a set request for its duration, and by a finishing model load.
        self._set_lock = threading.RLock()
        self.scheduler = Scheduler(
            ids, convert=self._to_rgb, publish=self._publish, policy=self._policy,
            clock_ns=lambda: self.get_clock().now().nanoseconds,
            batch_wait_ms=self.values["batch_wait_ms"], max_batch_size=self.values["max_batch_size"],
            latency_window=self.values["latency_window"],
            failures=FailureTracker(self.values["failure_error_count"], self.values["failure_window_s"]),
            log=self._log, clock_mismatch_s=self.values["clock_mismatch_s"],
            convert_batch=self._convert_batch,
        )
        self._serving = {name: self.values[name] for name in RELOAD_PARAMS}
        self._requested = dict(self._serving)
        try:
            self.scheduler.install(self._build_engine(self.values))
            self._publish_labels()
        except Exception as exc:  # any load failure is reported the same way
            if self.values["fail_fast"]:
                raise
            self.scheduler.startup_error = bounded(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"model not loaded, serving nothing: {self.scheduler.startup_error}")
        if self.scheduler.engine is not None and not self.values["weights"]:
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
        self.diagnostics_timer = self.create_timer(self.values["diagnostics_period"], self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stopped = False
        self.scheduler.start()
        engine = self.scheduler.engine.description if self.scheduler.engine else {"model": "(not loaded)"}
        for io in self.camera_io.values():
            self.get_logger().info(f"segmenting {io.subscription.topic_name} -> {io.labels.topic_name}")
        self.get_logger().info(f"one model for {len(ids)} camera(s): {engine}")

    def _camera_io(self, camera: str, topic: str) -> CameraIO:
        prefix = f"{camera}/" if camera else ""
        reliability = (
            ReliabilityPolicy.RELIABLE if self._camera_value(camera, "qos_reliability") == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        input_qos = QoSProfile(depth=self.values["qos_depth"], reliability=reliability,
                               history=HistoryPolicy.KEEP_LAST)
        if self._camera_value(camera, "image_transport") == "compressed":
            # image_transport's compressed plugin publishes on <base topic>/compressed
            subscription = self.create_subscription(
                CompressedImage, f"{topic.rstrip('/')}/compressed", functools.partial(self._on_compressed, camera),
                input_qos)
        else:
            subscription = self.create_subscription(Image, topic, functools.partial(self._on_image, camera),
                                                    input_qos)
        return CameraIO(
            camera=camera,
            subscription=subscription,
            labels=self.create_publisher(Image, f"{prefix}segmentation/labels", OUTPUT_QOS),
            color=self.create_publisher(Image, f"{prefix}segmentation/color", OUTPUT_QOS),
            overlay=self.create_publisher(Image, f"{prefix}segmentation/overlay", OUTPUT_QOS),
            confidence=self.create_publisher(Image, f"{prefix}segmentation/confidence", OUTPUT_QOS),
        )

    def _camera_value(self, camera: str, name: str) -> Any:
        """A camera's setting: its own override when set, else the node-wide parameter."""
        value = self.camera_values.get(camera, {}).get(name)
        return self.values[name] if value is None else value

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

    def _build_engine(self, values: dict[str, Any]) -> Engine:
        """Build and warm up an engine, so its first real frame is not the one paying for lazy
        initialisation (seconds on a cold CPU, cuDNN autotuning on a GPU)."""
        config = P.engine_config(values)
        engine = self._engine_factory(config)
        warmup = getattr(engine, "warmup", None)
        if warmup is not None:
            warmup(*(config.inference_size or WARMUP_SIZE))
        return engine

    def _log(self, level: int, message: str) -> None:
        """The scheduler's reports, into the ROS log; warnings and errors that start alike are
        logged at most once per ``LOG_THROTTLE_S``. Messages are bounded: they echo frames and
        parameter values."""
        message = bounded(message)
        if level >= logging.WARNING:
            key, now = (level, message[:24]), time.monotonic()
            if now - self._logged.get(key, -LOG_THROTTLE_S) < LOG_THROTTLE_S:
                return
            self._logged[key] = now
        logger = self.get_logger()
        if level >= logging.ERROR:
            logger.error(message)
        elif level >= logging.WARNING:
            logger.warning(message)
        else:
            logger.info(message)

    # -- frames -------------------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Image) -> None:
        """Check the frame's fields (no allocation) and hand it to the scheduler."""
        self._admit(camera, msg, "frame", lambda: check_image(
            msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
            self.values["max_pixels"]))

    def _on_compressed(self, camera: str, msg: CompressedImage) -> None:
        """Check a compressed frame's format and its header bytes (size against ``max_pixels``,
        truncation) without decoding it, and hand it to the scheduler; decoding runs in the
        worker, so a frame that is superseded is never decoded."""
        self._admit(camera, msg, "compressed frame",
                    lambda: check_compressed(msg.format, msg.data, self.values["max_pixels"]))

    def _admit(self, camera: str, msg: Image | CompressedImage, what: str,
               check: Callable[[], None]) -> None:
        """Run a message's checks; a rejected or malformed one is counted and logged (it must not
        stop the executor), anything else goes to the camera's slot."""
        try:
            check()
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

    def _convert_batch(self, frames: list[Frame]) -> list[Any]:
        """The worker's conversion of a batch: on a CUDA engine every JPEG of the batch is decoded
        by nvJPEG in one call straight into GPU memory; the rest one by one on the CPU. One entry
        per frame: its image, or the exception that rejects or fails it."""
        results: list[Any] = [None] * len(frames)
        device = getattr(self.scheduler.engine, "device", None)
        if getattr(device, "type", None) == "cuda":
            jpegs = [i for i, f in enumerate(frames)
                     if isinstance(f.payload, CompressedImage) and "jpeg" in f.payload.format.lower()]
            if jpegs:
                payloads = [(frames[i].payload.format, frames[i].payload.data) for i in jpegs]
                try:
                    decoded = decode_jpegs_cuda(payloads, device=device, max_pixels=self.values["max_pixels"])
                except (ImportError, RuntimeError) as exc:  # no nvJPEG here: the CPU decodes them
                    self._log(logging.WARNING, f"GPU JPEG decode unavailable, decoding on the CPU: {exc!r}"[:300])
                    decoded = [None] * len(jpegs)
                for i, image in zip(jpegs, decoded, strict=True):
                    results[i] = image
        for i, frame in enumerate(frames):
            if results[i] is None:
                try:
                    results[i] = self._to_rgb(frame)
                except Exception as exc:  # handed back: it fails or rejects this frame only
                    results[i] = exc
        return results

    def _to_rgb(self, frame: Frame) -> np.ndarray:
        """A frame's message as a uint8 HxWx3 RGB array (called by the worker).

        Our checks always run first (cv_bridge trusts the header fields); the conversion itself
        uses cv_bridge when a ROS install provides it, else our zero-copy conversion."""
        msg = frame.payload
        if isinstance(msg, CompressedImage):
            return decode_to_rgb(msg.format, msg.data, self.values["max_pixels"])
        if CvBridge is None:
            return image_msg_to_rgb(msg, self.values["max_pixels"])
        check_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
                    self.values["max_pixels"])
        if self._bridge is None:
            self._bridge = CvBridge()
        return self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")

    def _policy(self, camera: str) -> CameraPolicy:
        """Age limit and outputs for the camera's next frame: an optional output is computed only
        when enabled and someone subscribes to it."""
        io = self.camera_io[camera]
        wanted = functools.partial(self._camera_value, camera)
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

    def _thresholds(self) -> Thresholds:
        return Thresholds(self.values["latency_warn_ms"], self.values["latency_error_ms"],
                          self.values["drop_warn_ratio"], self.values["drop_error_ratio"])

    def _camera_args(self, camera: str, books: dict[str, Any]) -> dict[str, Any]:
        """A camera's figures for its report; the drop ratio covers frames since the last call."""
        stats = self.scheduler.camera_stats[camera]
        lost = books["dropped_total"] + books["rejected_total"]
        previous_received, previous_lost = self._last_report.get(camera, (0, 0))
        self._last_report[camera] = (books["received"], lost)
        return dict(
            accounting=books, interval_received=books["received"] - previous_received,
            interval_lost=lost - previous_lost, input_rate_hz=stats.input_rate.rate(),
            output_rate_hz=stats.output_rate.rate(), thresholds=self._thresholds(),
            silent_s=stats.silent_s(), silence_warn_s=self.values["silence_warn_s"],
            clock_mismatch=self.scheduler.stamp_clocks[camera].mismatch(),
        )

    def _engine_args(self) -> dict[str, Any]:
        scheduler = self.scheduler
        engine = scheduler.engine
        return dict(
            stages={stage: w.summary() for stage, w in list(scheduler.stage_latency.items())},
            engine=engine.description if engine else None,
            consecutive_failures=scheduler.failures.consecutive, failure_burst=scheduler.failures.burst(),
            last_error=scheduler.failures.last_error,
            gpu_memory_mb=engine.memory_allocated_mb() if engine else None,
            startup_error=scheduler.startup_error, model_loading=scheduler.loading,
            reload_error=scheduler.reload_error, batch_sizes=scheduler.batch_sizes.summary(),
        )

    def _status(self, name: str, report: HealthReport, hardware_id: str) -> DiagnosticStatus:
        return DiagnosticStatus(
            level=bytes([report.level]), name=name, message=report.message, hardware_id=hardware_id,
            values=[KeyValue(key=k, value=v) for k, v in report.values.items()],
        )

    def diagnostics(self) -> DiagnosticArray:
        """The current health report: one status in single-camera mode; with ``cameras`` one
        per camera plus one for the shared engine."""
        total, per_camera = self.scheduler.accounting.snapshots()
        engine = self.scheduler.engine
        device = str(engine.description["device"]) if engine else ""
        fqn = self.get_fully_qualified_name()
        if not self.cameras:
            report = merge_reports(
                engine_report(**self._engine_args()),
                camera_report(end_to_end=self.scheduler.end_to_end.summary(),
                              **self._camera_args(SINGLE_CAMERA, total)))
            statuses = [self._status(f"seg_perception: {fqn}", report, device)]
        else:
            engine_part = engine_report(**self._engine_args())
            engine_part.values["cameras"] = ",".join(self.cameras)
            for key in ("received", "processed", "dropped_total", "rejected_total", "in_flight"):
                engine_part.values[f"total_frames_{key}"] = str(total[key])
            statuses = [self._status(f"seg_perception: {fqn} engine", engine_part, device)]
            for camera in self.cameras:
                books = per_camera.get(camera) or self.scheduler.accounting.snapshot(camera)
                report = camera_report(end_to_end=self.scheduler.camera_stats[camera].end_to_end.summary(),
                                       **self._camera_args(camera, books))
                topic = self.camera_io[camera].subscription.topic_name
                report.values["image_topic"] = topic
                statuses.append(self._status(f"seg_perception: {fqn} camera {camera}", report, topic))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        return array

    # -- parameters ---------------------------------------------------------------------------
    def _changed(self, changes: list[Parameter]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool, str]:
        """The parameter values after ``changes``, whether the model must reload, and the reason
        the changes are refused ("" when they are not)."""
        values = dict(self.values)
        cameras = {camera: dict(v) for camera, v in self.camera_values.items()}
        reload = False
        for change in changes:
            value = _plain(change.value)
            spec = P.PARAMS_BY_NAME.get(change.name)
            camera, _, name = change.name.partition(".")
            if spec is not None:
                if value == values[change.name]:
                    continue
                if not (spec.dynamic or spec.reload):
                    return values, cameras, reload, f"{change.name} takes effect only on restart"
                reload |= spec.reload
                values[change.name] = value
            elif camera in cameras and name in P.CAMERA_PARAMS_BY_NAME:
                if value == cameras[camera][name]:
                    continue
                if not P.CAMERA_PARAMS_BY_NAME[name].dynamic:
                    return values, cameras, reload, f"{change.name} takes effect only on restart"
                cameras[camera][name] = value
            # anything else is not ours (e.g. use_sim_time)
        return values, cameras, reload, ""

    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        """As :meth:`Node.set_parameters`; a model load finishing meanwhile waits until all the
        parameters are set, so each is validated against the same loading state."""
        with self._set_lock:
            return super().set_parameters(parameter_list)

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        with self._set_lock:
            return super().set_parameters_atomically(parameter_list)

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Validate only: refuse invalid changes with the reason; nothing changes here."""
        if self._reverting is threading.current_thread():
            return SetParametersResult(successful=True, reason="reverted after a failed load")
        values, cameras, reload, refused = self._changed(changes)
        if refused:
            return SetParametersResult(successful=False, reason=bounded(refused))
        problems = P.validate_params(values)
        for camera, overrides in cameras.items():
            problems += P.camera_param_problems(camera, overrides)
        if problems:
            return SetParametersResult(successful=False, reason=bounded("; ".join(problems), 2000))
        loading = self.scheduler.loading
        if reload and loading is not None:
            return SetParametersResult(successful=False,
                                       reason=f"model {loading} is still loading; retry when it is done")
        if reload:
            return SetParametersResult(
                successful=True,
                reason=bounded(f"loading {_model_label(values)} in the background; the current model serves "
                               "until then"),
            )
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, changes: list[Parameter]) -> None:
        """Apply accepted changes; a model change starts a background load."""
        values, cameras, _, _ = self._changed(changes)
        self.values, self.camera_values = values, cameras
        self.scheduler.failures.configure(values["failure_error_count"], values["failure_window_s"])
        self.scheduler.batch_wait_ms = values["batch_wait_ms"]
        self.scheduler.max_batch_size = values["max_batch_size"]
        self.scheduler.clock_mismatch_s = values["clock_mismatch_s"]
        wanted = {name: values[name] for name in RELOAD_PARAMS}
        if self._reverting is threading.current_thread() or wanted == self._requested:
            return
        self._requested = wanted
        snapshot = dict(values)

        def loaded() -> None:
            self._serving = wanted
            self._publish_labels()

        if not self.scheduler.load(_model_label(snapshot), lambda: self._build_engine(snapshot),
                                   on_loaded=loaded, on_failed=self._revert, completion_lock=self._set_lock):
            self._log(logging.ERROR, "a model load is already running; the new model parameters "
                                     "take effect with the next model change")

    def _publish_labels(self) -> None:
        """Point the read-only ``class_names``/``palette`` at the serving model's labels (a
        checkpoint trained on a custom class set records its own). The node's own update, so the
        read-only check is bypassed by passing the descriptors, as rclpy does when declaring."""
        engine = self.scheduler.engine
        names, palette = getattr(engine, "class_names", None), getattr(engine, "palette", None)
        if names is None or palette is None:
            return
        params = [Parameter("class_names", value=[str(n) for n in names]),
                  Parameter("palette", value=[int(c) for c in np.asarray(palette).reshape(-1)])]
        for param in params:  # known values first, so the set callbacks see no change to refuse
            self.values[param.name] = param.value
        self._set_parameters_atomically_common(params, {p.name: self.describe_parameter(p.name) for p in params})

    def _revert(self, reason: str) -> None:
        """After a failed load: put the model parameters back to what is serving, so they never
        describe a model that is not running."""
        serving = _model_label(self._serving) if self.scheduler.engine is not None else "nothing"
        self._log(logging.ERROR, f"still serving {serving} ({reason[:300]})")
        self._requested = dict(self._serving)
        revert = {n: v for n, v in self._serving.items() if self.values[n] != v}
        self._reverting = threading.current_thread()
        try:
            if revert:
                self.set_parameters([Parameter(n, value=v) for n, v in revert.items()])
        finally:
            self._reverting = None

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
        # process entry point ends without finalising the interpreter (see process.py).
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
