"""``seg_node``: the rclpy adapter around :class:`~seg_perception.scheduler.Scheduler`.

The node declares parameters (with descriptors), creates one subscription and one set of
publishers per camera with their QoS, and publishes results and ``/diagnostics``. What needs no
ROS lives beside the scheduler and is tested without DDS:

* :mod:`~seg_perception.parameter_state`: the values, and the checks of a set request;
* :mod:`~seg_perception.reload`: background model loads and the revert after a failed one;
* :mod:`~seg_perception.lifecycle`: what configure, activate, deactivate, cleanup and shutdown do;
* :mod:`~seg_perception.frame_conversion`: checks at arrival, conversion (GPU or CPU JPEG decode);
* :mod:`~seg_perception.health`: the health reports (drop ratios and clock status per period);
* :mod:`~seg_perception.log_throttle`: rate-limited, bounded log lines;
* :mod:`~seg_perception.topics`: topic names and the startup checks of a camera configuration;
* :mod:`~seg_perception.scheduler`: slots, worker, batching, frame books, the engine swap.

:mod:`~seg_perception.camera_io` holds a camera's subscription and publishers and their QoS.

* With ``cameras`` empty the node serves one camera on ``image_topic`` and publishes
  ``segmentation/labels`` (and colour/overlay/confidence), one status on ``/diagnostics``.
* With ``cameras: [front, left, ...]`` each camera reads ``<camera>.image_topic`` and publishes
  ``<camera>/segmentation/...``; all share one model, and frames of several cameras run as one
  batch. ``/diagnostics`` carries one status per camera and one for the shared engine.

The node is an rclpy ``LifecycleNode``. With ``lifecycle: true`` it is a managed node: it starts
unconfigured and offers the lifecycle services; with ``lifecycle: false`` (a plain node) it has no
lifecycle services and runs configure and activate itself at startup. ``/diagnostics`` reports in
every state.

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
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from . import params as P
from .camera_io import CameraIO, open_input, open_outputs
from .engine_api import SegmentationResult
from .frame_conversion import FrameConverter, is_compressed
from .health import SINGLE_CAMERA, HealthReporter, Status
from .image_conversion import ImageRejected
from .lifecycle import ServingLifecycle
from .log_throttle import LogThrottle
from .parameter_state import ParameterState, plain_value
from .params import params_file_problem
from .rclpy_compat import destroy_lifecycle, init_lifecycle, parameter_overrides, set_read_only_parameters
from .reload import EngineFactory, ReloadController, build_engine, default_engine_factory
from .scheduler import NO_SUBSCRIBERS, CameraPolicy, Frame, Scheduler
from .shutdown import ShutdownRequested, ShutdownSignals
from .stats import FailureTracker
from .text import one_line
from .topics import CameraTopics, camera_topics
from .weights_access import allowed_weights_dirs

#: Seconds ``stop`` waits for the worker; the process must be gone within 2 s of a signal.
STOP_TIMEOUT_S = 1.5

#: Seconds between checks for a shutdown request while spinning (bounds the reaction to a signal).
SIGNAL_POLL_S = 0.05

#: What a node that cannot start raises: bad parameters (ours and rclpy's), a model or checkpoint
#: that cannot load, a missing file. Anything else is a bug and keeps its traceback.
STARTUP_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError, ParameterException)

#: Unknown parameter names warned about one by one; the rest are counted.
MAX_UNKNOWN_REPORTED = 10

SUCCESS, FAILURE, ERROR = (TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE,
                           TransitionCallbackReturn.ERROR)


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


def _resolve_topic(node: Node, topic: str) -> str:
    """``topic`` as ``node`` resolves it (namespace, remapping); ValueError when it is not valid."""
    try:
        return node.resolve_topic_name(topic)
    except RuntimeError as exc:  # rclpy's RCLError: not a valid topic name
        raise ValueError(str(exc)) from None


def _declare(node: Node) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Declare every parameter on ``node``; the node-wide values and the per-camera overrides
    (none when ``cameras`` is not a valid list: validation reports it)."""
    values = {}
    for spec in P.PARAMS:
        # An empty list has no ROS type: declare it typed (it stays unset until given).
        default = Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default
        declared = plain_value(node.declare_parameter(spec.name, default, _descriptor(spec)).value)
        values[spec.name] = plain_value(spec.default) if declared is None else declared
    camera_values: dict[str, dict[str, Any]] = {}
    if P.camera_name_problems(values["cameras"]):
        return values, camera_values
    for camera in values["cameras"]:
        overrides = {}
        for spec in P.CAMERA_PARAMS:
            name = f"{camera}.{spec.name}"
            default = P.default_camera_topic(camera) if spec.name == "image_topic" else None
            overrides[spec.name] = plain_value(node.declare_parameter(name, default,
                                                                      _camera_descriptor(name, spec)).value)
        camera_values[camera] = overrides
    return values, camera_values


def _warn_unknown_parameters(node: Node, cameras: tuple[str, ...]) -> None:
    """Overrides (params file, ``-p``) that name no declared parameter are typos: rclpy ignores
    them silently, so name each with the closest known parameter (or camera)."""
    unknown = [name for name in parameter_overrides(node) if not node.has_parameter(name)]
    known = [spec.name for spec in P.PARAMS if not spec.read_only]
    for name in unknown[:MAX_UNKNOWN_REPORTED]:
        node.get_logger().warning(P.unknown_parameter_message(name, known, cameras))
    if len(unknown) > MAX_UNKNOWN_REPORTED:
        node.get_logger().warning(f"... and {len(unknown) - MAX_UNKNOWN_REPORTED} more unknown parameters")


def _ros_log(logger: Any, level: int, message: str) -> None:
    """Where the (throttled, bounded) reports of the scheduler and the node's parts go."""
    if level >= logging.ERROR:
        logger.error(message)
    elif level >= logging.WARNING:
        logger.warning(message)
    else:
        logger.info(message)


def _scheduler(cameras: tuple[str, ...], values: dict[str, Any], converter: FrameConverter,
               **callbacks: Any) -> Scheduler:
    """The node's scheduler, set up from its parameters (``callbacks``: publish, policy, clock, log)."""
    return Scheduler(
        cameras, convert=converter.convert, convert_batch=converter.convert_batch,
        batch_wait_ms=values["batch_wait_ms"], max_batch_size=values["max_batch_size"],
        latency_window=values["latency_window"], clock_mismatch_s=values["clock_mismatch_s"],
        failures=FailureTracker(values["failure_error_count"], values["failure_window_s"]), **callbacks)


def _close(node: SegmentationNode, *, outputs: bool) -> None:
    """Unsubscribe every camera of ``node``; with ``outputs`` destroy its publishers too."""
    for io in node.camera_io.values():
        io.close(node, outputs=outputs)
    if outputs:
        node.camera_io.clear()


def _transition(method: Callable[[SegmentationNode, LifecycleState], TransitionCallbackReturn]
                ) -> Callable[[SegmentationNode, LifecycleState], TransitionCallbackReturn]:
    """A transition callback that logs what it raised (rclpy turns it into ERROR silently)."""
    @functools.wraps(method)
    def run(node: SegmentationNode, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return method(node, state)
        except Exception as exc:
            node.get_logger().error(f"{method.__name__} raised {type(exc).__name__}: {one_line(exc)}")
            return ERROR
    return run


class SegmentationNode(LifecycleNode):
    """Subscribes to camera images, publishes per-pixel class ids and health diagnostics.

    ``engine_factory`` replaces :class:`~seg_perception.engine.SegmentationEngine` (startup and runtime reloads); the
    reliability tests use it to run thousands of frames through the real ROS path quickly.
    ``scheduler`` is public: tests and tools read its books and statistics and set its
    ``before_inference`` fault hook there. ``serving.state`` is the lifecycle state.
    ``interruptible()`` wraps configure (the process makes a signal end a long model build).
    """

    def __init__(self, *, engine_factory: EngineFactory | None = None,
                 interruptible: Callable[[], AbstractContextManager[Any]] = nullcontext, **kwargs: Any) -> None:
        Node.__init__(self, "seg_node", **kwargs)  # the lifecycle part once `lifecycle` is read
        self._interruptible = interruptible
        try:
            self._setup(engine_factory or default_engine_factory)
        except BaseException:
            if getattr(self, "scheduler", None) is not None:
                self.scheduler.stop(STOP_TIMEOUT_S)
            Node.destroy_node(self)  # nothing half-configured stays registered in the graph
            destroy_lifecycle(self)
            raise

    @property
    def values(self) -> dict[str, Any]:
        """The node-wide parameter values in effect."""
        return self.parameters.values

    @property
    def camera_values(self) -> dict[str, dict[str, Any]]:
        """Per-camera overrides in effect; None = follows the node-wide parameter."""
        return self.parameters.camera_values

    @property
    def subscription(self) -> Any:
        """The first camera's (in single-camera mode the only) subscription; None unless active."""
        return getattr(self.camera_io.get(self._ids[0]), "subscription", None)

    @property
    def labels_pub(self) -> Any:
        """The first camera's labels publisher; None while unconfigured."""
        return getattr(self.camera_io.get(self._ids[0]), "labels", None)

    # -- setup --------------------------------------------------------------------------------
    def _setup(self, engine_factory: EngineFactory) -> None:
        values, camera_values = _declare(self)
        self.cameras: tuple[str, ...] = tuple(values["cameras"])
        _warn_unknown_parameters(self, self.cameras)
        config = {**values, **{f"{camera}.{name}": value for camera, overrides in camera_values.items()
                               for name, value in overrides.items() if value is not None}}
        problems = P.validate_config(config, resolve=functools.partial(_resolve_topic, self))
        if problems:
            raise ValueError("invalid seg_node parameters: " + "; ".join(problems))
        self.managed: bool = values["lifecycle"]
        init_lifecycle(self, services=self.managed)
        self.parameters = ParameterState(values, camera_values,
                                         allowed_weights_dirs(values["weights"], values["weights_dirs"]))
        self._ids = self.cameras or (SINGLE_CAMERA,)
        self.topics: dict[str, CameraTopics] = camera_topics(self._ids, self.parameters.camera_value,
                                                             functools.partial(_resolve_topic, self))[0]
        self.camera_io: dict[str, CameraIO] = {}
        self._duplicate_seen = False
        self._failure: Exception | None = None
        self._log = LogThrottle(functools.partial(_ros_log, self.get_logger()))
        self.converter = FrameConverter(
            max_pixels=lambda: self.values["max_pixels"], log=self._log,
            device=lambda: self.scheduler.engine.device if self.scheduler.engine is not None else None)
        self.scheduler = _scheduler(self._ids, values, self.converter, publish=self._publish, policy=self._policy,
                                    clock_ns=lambda: self.get_clock().now().nanoseconds, log=self._log)
        self.health = HealthReporter(self.scheduler)
        self.reload = ReloadController(
            self.scheduler, self.parameters, functools.partial(build_engine, engine_factory),
            set_parameters=lambda revert: self.set_parameters([Parameter(n, value=v) for n, v in revert.items()]),
            on_loaded=self._publish_labels, log=self._log)
        self.serving = ServingLifecycle(self.scheduler, self.reload, self._log)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        # On the steady clock: under use_sim_time a ROS-time timer stops whenever the bag pauses,
        # and health reports (a silent camera above all) must not.
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stopped = False
        self.scheduler.start()
        if self.managed:
            self.get_logger().info(f"managed node {self.get_fully_qualified_name()} is unconfigured: "
                                   "configure loads the model, activate serves")
            return
        if self.trigger_configure() != SUCCESS:
            raise self._failure or RuntimeError("configure failed")
        if self.trigger_activate() != SUCCESS:
            raise RuntimeError("activate failed")

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

    # -- lifecycle transitions ----------------------------------------------------------------
    @_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build and warm the engine, then create the outputs. A plain node without
        ``fail_fast`` stays up without a model, reporting ERROR, as it always has."""
        stay = not self.managed and not self.values["fail_fast"]
        with self._interruptible():
            self._failure = self.serving.configure(stay_configured=stay)
        if self._failure is not None and not stay:
            if self.managed:
                self.get_logger().error(f"configure failed, still unconfigured: {self.scheduler.startup_error}")
                self._publish_diagnostics()
            return FAILURE
        if self._failure is not None:
            self.get_logger().error(f"model not loaded, serving nothing: {self.scheduler.startup_error}")
        elif not self.values["weights"]:
            self.get_logger().warning(
                "NO WEIGHTS CONFIGURED: the model has random weights and its labels are meaningless")
        for camera in self._ids:
            self.camera_io[camera] = open_outputs(self, camera, self._setting(camera))
        self._publish_labels()
        engine = self.scheduler.engine.description if self.scheduler.engine else {"model": "(not loaded)"}
        self.get_logger().info(f"one model for {len(self._ids)} camera(s): {engine}")
        return self._after_transition()

    @_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe every camera and publish from the next frame on."""
        for camera, io in self.camera_io.items():
            open_input(self, io, self.topics[camera].subscribed, self._setting(camera), self.values["qos_depth"],
                       functools.partial(self._on_frame, camera))
            self.get_logger().info(f"segmenting {io.subscription.topic_name} -> {io.labels.topic_name}")
        super().on_activate(state)  # the managed publishers
        self.serving.activate()
        return self._after_transition()

    @_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames (those waiting or in flight are dropped as ``inactive``); keep the engine."""
        self.serving.deactivate()
        _close(self, outputs=False)
        super().on_deactivate(state)
        return self._after_transition()

    @_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the engine and its device memory, and the outputs."""
        self.serving.cleanup()
        _close(self, outputs=True)
        return self._after_transition()

    @_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.serving.shutdown()
        _close(self, outputs=True)
        return self._after_transition()

    @_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised (logged there): release everything and go back to unconfigured."""
        self.serving.error()
        _close(self, outputs=True)
        return self._after_transition()

    def _after_transition(self) -> TransitionCallbackReturn:
        """A managed node reports its new state at once (a plain one on its period only)."""
        if self.managed:
            self.get_logger().info(f"lifecycle state: {self.serving.state}")
            self._publish_diagnostics()
        return SUCCESS

    # -- frames -------------------------------------------------------------------------------
    def _on_frame(self, camera: str, msg: Image | CompressedImage) -> None:
        """Check a frame's fields (a compressed one's header bytes too: size against
        ``max_pixels``, truncation) without allocating or decoding, and hand it to the scheduler;
        conversion runs in the worker, so a frame that is superseded is never converted. A
        rejected or malformed frame is counted and logged (it must not stop the executor). With
        ``lazy``, a frame nobody would receive a result of is skipped (``no_subscribers``)."""
        io = self.camera_io.get(camera)
        if (io is not None and self.parameters.camera_value(camera, "lazy")
                and not io.has_subscribers(self._enabled(camera))):
            self.scheduler.skip(camera, NO_SUBSCRIBERS)
            return
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

    def _setting(self, camera: str) -> Callable[[str], Any]:
        """``camera``'s effective value of a parameter (its override, else the node-wide one)."""
        return functools.partial(self.parameters.camera_value, camera)

    def _enabled(self, camera: str) -> Callable[[str], bool]:
        """Whether ``camera`` publishes an optional output (its ``publish_<output>``)."""
        return lambda output: self.parameters.camera_value(camera, f"publish_{output}")

    def _policy(self, camera: str) -> CameraPolicy:
        """Age limit and outputs for the camera's next frame (see :meth:`CameraIO.request`)."""
        return CameraPolicy(max_age_ms=self.parameters.camera_value(camera, "max_age_ms"),
                            outputs=self.camera_io[camera].request(self._enabled(camera),
                                                                   self.values["overlay_alpha"]))

    def _publish(self, frame: Frame, result: SegmentationResult) -> None:
        self.camera_io[frame.camera].publish(frame.payload.header, result)

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._check_duplicate_name()
            self.diagnostics_pub.publish(self.diagnostics())
        except Exception as exc:  # diagnostics must never take the node down
            self._log(logging.ERROR, f"diagnostics failed: {exc!r}")

    def diagnostics(self) -> DiagnosticArray:
        """The current health report: one status in single-camera mode; with ``cameras`` one
        per camera plus one for the shared engine; a managed node's carry its lifecycle state.
        Each call starts a new reporting period."""
        topics = {camera: self.topics[camera].subscribed for camera in self._ids}
        statuses = self.health.statuses(self.values, self.cameras, topics, self.serving.state if self.managed else None)
        return _diagnostic_array(self.get_fully_qualified_name(), statuses, self.get_clock().now().to_msg())

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
        """Apply accepted changes; a model change starts a background load (once configured)."""
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

    # -- process shutdown ---------------------------------------------------------------------
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
        destroy_lifecycle(self)


def _diagnostic_array(fqn: str, statuses: list[Status], stamp: Any) -> DiagnosticArray:
    """The statuses as one ``/diagnostics`` message, named after the node ``fqn``."""
    array = DiagnosticArray(status=[
        DiagnosticStatus(level=bytes([s.report.level]), name=f"seg_perception: {fqn}{s.name_suffix}",
                         message=s.report.message, hardware_id=s.hardware_id,
                         values=[KeyValue(key=k, value=v) for k, v in s.report.values.items()])
        for s in statuses
    ])
    array.header.stamp = stamp
    return array


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
        node = SegmentationNode(interruptible=signals.interruptible)
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
