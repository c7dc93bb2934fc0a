"""Frame scheduling between camera subscriptions and one shared engine, without ROS.

The node hands every received frame to a :class:`Scheduler` and gets results back through a
callback; everything in between lives here, so it is unit-tested with fake engines and no DDS:

* **slots**: each camera has a latest-frame slot. A frame replaced before the worker takes it is
  dropped (``superseded``), so a flooded camera never queues and never starves the others, and a
  slow camera never blocks them;
* **batching**: each cycle the worker takes the newest pending frame of every camera that has one
  (at most ``max_batch_size``, in round-robin order so every camera gets its turn) and submits them
  to the engine as one batch. Once one frame is pending, the cycle waits at most ``batch_wait_ms``
  for the other cameras: a longer wait batches more cameras per model run (fewer, larger runs: more
  throughput on a GPU) at the price of that much extra latency for the frame that came first;
* **accounting**: every frame ends processed, dropped with a reason or rejected with a reason, per
  camera and in total (:class:`~seg_perception.stats.FrameAccounting`);
* **engine lifecycle**: the serving engine, a background load of a new one while the old one
  serves, the swap (one reference assignment between batches), and the failure report when a
  load fails;
* **pausing**: a paused scheduler serves nothing (a lifecycle node that is not active): frames
  that arrive, wait or finish meanwhile are dropped with the pause's reason, and once the worker
  holds no batch the engine can be released (its memory with it).

The worker thread never lets an exception escape, and a frame that fails (conversion, the fault
hook, the engine) fails alone: when a batch of several frames fails, its frames are retried one
by one so a bad frame of one camera never costs another camera its frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine_api import Engine, OutputRequest, PendingFrame, SegmentationResult, check_engine
from .image_conversion import ImageRejected
from .stamps import DEFAULT_LIMIT_S, Arrival, StampClock
from .stats import FailureTracker, FrameAccounting, LatencyWindow, RateMeter
from .text import bounded

LOG = logging.getLogger(__name__)

#: Seconds the worker waits for a first frame before checking for shutdown again.
IDLE_WAIT_S = 0.1
#: The latest converted frames kept for a reload's parity gate (its "live input" frames).
PARITY_FRAMES = 3

#: Seconds :meth:`Scheduler.pause` and :meth:`Scheduler.release` wait for the batch in flight.
PAUSE_TIMEOUT_S = 5.0

#: Drop reasons of frames the node chose not to serve, not failures (the health report's drop
#: ratio leaves them out): nobody subscribes to any of the camera's outputs (``lazy``), and the
#: node is not active (a paused scheduler: a lifecycle node that is inactive).
NO_SUBSCRIBERS = "no_subscribers"
INACTIVE = "inactive"
NOT_SERVED: tuple[str, ...] = (NO_SUBSCRIBERS, INACTIVE)


@dataclass(frozen=True)
class Frame:
    """A received frame: ``payload`` is the message, opaque to the scheduler."""

    camera: str
    payload: Any
    #: Header stamp (0 when the sender left it empty) and local receive time, both in the
    #: scheduler clock's nanoseconds.
    stamp_ns: int
    received_ns: int
    #: Whether the stamp is on the scheduler clock (see :mod:`~seg_perception.stamps`); when it
    #: is not, the frame's age runs from ``received_steady_ns`` (``time.monotonic_ns``).
    on_clock: bool = True
    received_steady_ns: int = 0


@dataclass(frozen=True)
class CameraPolicy:
    """How one camera's frames are served right now (read once per frame)."""

    #: Frames older than this when their batch starts are dropped (``stale``); 0 = never.
    max_age_ms: float = 0.0
    outputs: OutputRequest = OutputRequest()


@dataclass
class CameraStats:
    """Rates, latency and liveness of one camera (its frame books are in the accounting)."""

    end_to_end: LatencyWindow
    input_rate: RateMeter = field(default_factory=RateMeter)
    output_rate: RateMeter = field(default_factory=RateMeter)
    #: ``time.monotonic()`` of the last frame received (any outcome); None before the first.
    last_received: float | None = None

    def silent_s(self, now: float | None = None) -> float | None:
        """Seconds since the last frame, or None when none has arrived yet."""
        if self.last_received is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_received


@dataclass
class _Started:
    frame: Frame
    pending: PendingFrame
    #: Milliseconds ``convert`` took (message -> RGB: a decode for compressed frames).
    decode_ms: float = 0.0


class FrameSlots:
    """Latest-frame slots, one per camera, behind one condition variable."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self._order = list(cameras)
        self._frames: dict[str, Frame | None] = dict.fromkeys(self._order)
        self._next = 0  # round-robin: the camera served first in the next cycle
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> Frame | None:
        """Store ``frame`` in its camera's slot; return the frame that will never be processed,
        if any: the one it replaced, or ``frame`` itself once the slots are closed."""
        with self._cond:
            if self._closed:
                return frame
            replaced, self._frames[frame.camera] = self._frames[frame.camera], frame
            self._cond.notify_all()
            return replaced

    def _pending(self) -> int:
        return sum(frame is not None for frame in self._frames.values())

    def take(self, timeout: float, wait_s: float = 0.0, limit: int = 0) -> list[Frame]:
        """The newest frame of up to ``limit`` (0 = all) cameras.

        Waits up to ``timeout`` for a first frame; then up to ``wait_s`` more until every camera
        (or ``limit`` cameras) has one. Cameras are served in rotating order, so with a limit
        smaller than the number of waiting cameras none waits more than one extra cycle.
        """
        with self._cond:
            if not self._pending() and not self._closed:
                self._cond.wait_for(lambda: self._pending() > 0 or self._closed, timeout)
            if not self._pending():
                return []
            enough = min(limit or len(self._order), len(self._order))
            if wait_s > 0 and self._pending() < enough:
                self._cond.wait_for(lambda: self._pending() >= enough or self._closed, wait_s)
            taken: list[Frame] = []
            count, start = len(self._order), self._next
            for offset in range(count):
                index = (start + offset) % count
                frame = self._frames[self._order[index]]
                if frame is None:
                    continue
                self._frames[self._order[index]] = None
                taken.append(frame)
                self._next = (index + 1) % count
                if len(taken) == enough:
                    break
            return taken

    def drain(self) -> list[Frame]:
        """Empty every slot; return the frames that were waiting (they will not be processed)."""
        with self._cond:
            waiting = [f for f in self._frames.values() if f is not None]
            self._frames = dict.fromkeys(self._order)
            self._cond.notify_all()
            return waiting

    def close(self) -> list[Frame]:
        """Refuse further frames; return those still waiting (they will not be processed)."""
        with self._cond:
            self._closed = True
        return self.drain()


def _default_log(level: int, message: str) -> None:
    LOG.log(level, message)


class Scheduler:
    """Slots per camera, one worker, batched inference, frame accounting and engine swaps.

    The owner (the node, a test) provides:

    * ``convert(frame) -> RGB array``: turns a frame's payload into a uint8 HxWx3 array, in the
      worker; raising :class:`~seg_perception.image_conversion.ImageRejected` rejects the frame;
    * ``convert_batch(frames) -> [RGB array or exception, ...]`` (optional): converts several
      frames in one call, one entry per frame in order; a frame's exception fails that frame only;
    * ``publish(frame, result)``: delivers a result; raising drops the frame (``publish_error``);
    * ``policy(camera) -> CameraPolicy``: age limit and outputs, read per frame so runtime
      parameter changes apply to the next frame;
    * ``clock_ns``: the clock of the frames' stamps (the node's ROS clock). Each camera's stamps
      are judged against it (:class:`~seg_perception.stamps.StampClock`, ``clock_mismatch_s``):
      a camera whose stamps are off this clock (a replayed bag, zero stamps, an unsynchronised
      camera) is served with ages measured from arrival instead of being dropped as stale;
    * ``log(level, message)``: where problems are reported (rate-limited by the owner).

    ``before_inference`` is a fault-injection hook for tests: called with each frame's RGB array
    just before submission; whatever it raises is that frame's inference failure.

    :meth:`pause` and :meth:`resume` stop and restart serving without stopping the worker (a
    lifecycle node's deactivate and activate); :meth:`release` lets the engine go (cleanup).
    """

    def __init__(
        self,
        cameras: Sequence[str],
        *,
        convert: Callable[[Frame], np.ndarray],
        publish: Callable[[Frame, SegmentationResult], None],
        policy: Callable[[str], CameraPolicy] = lambda camera: CameraPolicy(),
        clock_ns: Callable[[], int] = time.time_ns,
        batch_wait_ms: float = 2.0,
        max_batch_size: int = 0,
        latency_window: int = 300,
        failures: FailureTracker | None = None,
        log: Callable[[int, str], None] = _default_log,
        clock_mismatch_s: float = DEFAULT_LIMIT_S,
        convert_batch: Callable[[list[Frame]], list[Any]] | None = None,
    ) -> None:
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be distinct and at least one, got {list(cameras)[:16]}")
        self.cameras: tuple[str, ...] = tuple(cameras)
        self.convert, self.publish, self.policy = convert, publish, policy
        self.convert_batch = convert_batch
        self.clock_ns, self.log = clock_ns, log
        #: Read every cycle, so they may be changed while running.
        self.batch_wait_ms, self.max_batch_size = batch_wait_ms, max_batch_size
        self.before_inference: Callable[[np.ndarray], None] | None = None

        self.accounting = FrameAccounting()
        self.failures = failures or FailureTracker()
        self._window = latency_window
        #: Per-stage engine latency, one window per key found in results' ``timings_ms``.
        self.stage_latency: dict[str, LatencyWindow] = {}
        #: End-to-end latency (header stamp -> result published) over all cameras.
        self.end_to_end = LatencyWindow(latency_window)
        #: The batch size each processed frame ran in.
        self.batch_sizes = LatencyWindow(latency_window)
        self.camera_stats: dict[str, CameraStats] = {
            camera: CameraStats(LatencyWindow(latency_window)) for camera in self.cameras
        }
        #: Whether each camera's stamps are on ``clock_ns``; their mismatch state for diagnostics.
        self.stamp_clocks: dict[str, StampClock] = {camera: StampClock(clock_mismatch_s) for camera in self.cameras}

        self._engine: Engine | None = None
        self.loading: str | None = None
        self.startup_error: str | None = None
        self.reload_error: str | None = None
        #: Set when the parity gate refused the requested engine at startup and the fp32 reference
        #: serves instead (why, with the measured figure); cleared when another engine is installed.
        self.parity_fallback: str | None = None
        self._recent_frames: deque[Any] = deque(maxlen=PARITY_FRAMES)
        self._recent_lock = threading.Lock()  # the worker appends while a set request reads
        self._engine_lock = threading.Lock()
        self._loader: threading.Thread | None = None
        #: Counts :meth:`release` calls: a load started before one is discarded when it completes.
        self._generation = 0

        #: Why nothing is served (a drop reason), None while serving. Read and set under
        #: ``_publish_lock``, so no result is published after :meth:`pause` returns.
        self._paused: str | None = None
        self._publish_lock = threading.Lock()
        #: True while the worker holds frames or a batch in flight (it may be using the engine).
        self._busy = False
        self._idle = threading.Condition()

        self._slots = FrameSlots(self.cameras)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)

    # -- engine -------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        """The engine serving now (None until one is installed)."""
        return self._engine

    def install(self, engine: Engine) -> None:
        """Serve ``engine`` from the next batch on; clears load errors. An object that lacks a
        member of the :class:`~seg_perception.engine_api.Engine` protocol is refused
        (:class:`~seg_perception.engine_api.EngineInterfaceError`)."""
        check_engine(engine)
        with self._engine_lock:
            self._engine = engine
            self.startup_error = self.reload_error = self.parity_fallback = None
        self.failures.success()

    def load(self, label: str, build: Callable[[], Engine], on_loaded: Callable[[], None] | None = None,
             on_failed: Callable[[str], None] | None = None,
             completion_lock: AbstractContextManager[Any] | None = None) -> bool:
        """Build an engine in the background while the current one serves, then swap it in.

        Returns False (and starts nothing) while another load is running. On failure the
        current engine keeps serving, ``reload_error`` says why, and ``on_failed(reason)`` runs
        before ``loading`` clears (the node puts its parameters back there). ``on_loaded`` runs
        right after the swap. ``completion_lock`` is held while the outcome is applied (swap, or
        failure report and ``on_failed``), so the owner can keep a load from completing in the
        middle of its own multi-step update (the node: a set request of several parameters).
        """
        with self._engine_lock:
            if self.loading is not None or self._stop.is_set():
                return False
            self.loading = label
            self._loader = threading.Thread(target=self._load, args=(label, build, on_loaded, on_failed,
                                                                         completion_lock or nullcontext(),
                                                                         self._generation),
                                            name="seg_model_loader", daemon=True)
            self._loader.start()
        return True

    def _load(self, label: str, build: Callable[[], Engine], on_loaded: Callable[[], None] | None,
              on_failed: Callable[[str], None] | None, completion_lock: AbstractContextManager[Any],
              generation: int) -> None:
        try:
            engine: Engine | None = check_engine(build())
            self._prepare_like_serving(engine)
            reason = ""
        except Exception as exc:  # every load failure is reported, none kills us
            engine, reason = None, f"{type(exc).__name__}: {exc}"
        with completion_lock:
            if engine is None and generation == self._generation:
                self._load_failed(label, reason, on_failed)
                return
            with self._engine_lock:
                self.loading = None
                if self._stop.is_set():
                    return
                released = generation != self._generation  # release() ran meanwhile: nobody wants it
                if not released:
                    retired, self._engine = self._engine, engine  # the swap: the worker picks it up next batch
                    self.startup_error = self.reload_error = self.parity_fallback = None
            if released:
                self._retire(engine)
                self.log(logging.INFO, f"discarded {label}: the model was released while it loaded")
                return
            self._retire(retired)  # batches in flight on it still complete
            self.failures.success()
            if on_loaded is not None:
                on_loaded()
        self.log(logging.INFO, f"now serving {label}: {engine.description}")

    @staticmethod
    def _retire(engine: Engine | None) -> None:
        """Close an engine the scheduler no longer serves (its background preparation thread)."""
        if engine is not None:
            engine.close()

    def release(self, timeout: float = PAUSE_TIMEOUT_S) -> bool:
        """Let the engine go (a lifecycle node's cleanup; call :meth:`pause` first): once the
        worker holds no batch (at most ``timeout`` s) the scheduler drops its reference and closes
        the engine, and a model load still running is discarded when it completes. Afterwards
        nothing here refers to an engine, so its memory is freed with the last outside reference.
        False when the worker was still busy after ``timeout`` (it finishes that batch alone)."""
        idle = self.wait_idle(timeout)
        with self._engine_lock:
            retired, self._engine = self._engine, None
            self._generation += 1
            self.startup_error = self.reload_error = None
        self._retire(retired)
        return idle

    def _prepare_like_serving(self, engine: Engine) -> None:
        """Have a freshly built engine compile/capture the batch shapes the serving engine has
        seen recently, in the loader thread, so the swap does not make the next frames pay for it."""
        serving = self._engine
        if serving is None:
            return
        for sizes, outputs in serving.recent_batches():
            engine.prepare(sizes, outputs)

    def _load_failed(self, label: str, reason: str, on_failed: Callable[[str], None] | None) -> None:
        self.reload_error = bounded(f"{label}: {reason}")
        self.log(logging.ERROR, f"could not load {label}: {reason}; the current model keeps serving")
        try:
            if on_failed is not None and not self._stop.is_set():
                on_failed(reason)
        except Exception as exc:  # e.g. the node is being destroyed
            self.log(logging.WARNING, f"after the failed load: {exc!r}")
        finally:
            self.loading = None

    def recent_frames(self) -> list[Any]:
        """The latest converted frames (at most :data:`PARITY_FRAMES`, newest last): the live
        input a reload's parity gate compares the new engine on."""
        with self._recent_lock:
            return list(self._recent_frames)

    # -- input --------------------------------------------------------------------------------
    def _arrived(self, camera: str) -> CameraStats:
        stats = self.camera_stats[camera]
        self.accounting.receive(camera)
        stats.input_rate.tick()
        stats.last_received = time.monotonic()
        return stats

    def put(self, camera: str, payload: Any, stamp_ns: int, received_ns: int | None = None) -> None:
        """A valid-looking frame of ``camera`` arrived: it replaces the camera's waiting frame."""
        self._arrived(camera)
        received_ns = self.clock_ns() if received_ns is None else received_ns
        stamps = self.stamp_clocks[camera]
        arrival = stamps.arrive(stamp_ns, received_ns)
        transition = stamps.take_transition()
        if transition is not None:
            self.log(logging.INFO if arrival.on_clock else logging.WARNING, f"camera {camera!r}: {transition}")
        if self._paused is not None:
            self.accounting.drop(self._paused, camera)
            return
        if self._engine is None:
            self.accounting.drop("model_not_loaded", camera)
            return
        frame = Frame(camera, payload, stamp_ns, received_ns, arrival.on_clock, arrival.received_steady_ns)
        lost = self._slots.put(frame)
        if lost is frame:
            self.accounting.drop("shutdown", camera)
        elif lost is not None:
            self.accounting.drop("superseded", camera)

    def reject(self, camera: str, reason: str) -> None:
        """A frame of ``camera`` arrived and was refused before queueing (bad fields)."""
        self._arrived(camera)
        self.accounting.reject(reason, camera)

    def skip(self, camera: str, reason: str) -> None:
        """A frame of ``camera`` arrived and is deliberately not served (e.g. ``no_subscribers``)."""
        self._arrived(camera)
        self.accounting.drop(reason, camera)

    # -- pausing ------------------------------------------------------------------------------
    @property
    def paused(self) -> str | None:
        """Why nothing is served (the drop reason), None while serving."""
        return self._paused

    def pause(self, reason: str = INACTIVE, timeout: float = PAUSE_TIMEOUT_S) -> bool:
        """Serve nothing until :meth:`resume`: frames that arrive or wait, and results of batches
        still in flight, are dropped with ``reason``; nothing is published after this returns.
        Waits (at most ``timeout`` s) until the worker holds no batch; False when it still does."""
        with self._publish_lock:  # a result being published now goes out first
            self._paused = reason
        for frame in self._slots.drain():
            self.accounting.drop(reason, frame.camera)
        return self.wait_idle(timeout)

    def resume(self) -> None:
        """Serve again from the next frame on."""
        with self._publish_lock:
            self._paused = None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the worker holds no frames and no batch in flight; False after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def _set_busy(self, busy: bool) -> None:
        with self._idle:
            if busy != self._busy:
                self._busy = busy
                self._idle.notify_all()

    @property
    def clock_mismatch_s(self) -> float:
        return self.stamp_clocks[self.cameras[0]].limit_s

    @clock_mismatch_s.setter
    def clock_mismatch_s(self, value: float) -> None:
        for stamps in self.stamp_clocks.values():
            stamps.limit_s = value

    def configure(self, *, batch_wait_ms: float | None = None, max_batch_size: int | None = None,
                  clock_mismatch_s: float | None = None, failure_error_count: int | None = None,
                  failure_window_s: float | None = None) -> None:
        """Change the runtime settings (those given; the others stay): batching, the stamp clock
        limit and the failure burst rule. Read per cycle or per frame, so they apply at once."""
        if batch_wait_ms is not None:
            self.batch_wait_ms = batch_wait_ms
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size
        if clock_mismatch_s is not None:
            self.clock_mismatch_s = clock_mismatch_s
        if failure_error_count is not None or failure_window_s is not None:
            self.failures.configure(
                self.failures.threshold if failure_error_count is None else failure_error_count,
                self.failures.window_s if failure_window_s is None else failure_window_s)

    def startup_failed(self, reason: str) -> None:
        """No engine could be built at startup: serve nothing and report ``reason`` (bounded)."""
        self.startup_error = bounded(reason)

    @staticmethod
    def frame_age_ms(frame: Frame, now_ns: int) -> float:
        """Age of a frame at ``now_ns`` (scheduler clock): from its header stamp when that is on
        the clock, else from its arrival (steady clock). Never negative."""
        arrival = Arrival(frame.stamp_ns, frame.received_ns, frame.received_steady_ns, frame.on_clock)
        return arrival.age_ms(now_ns)

    # -- worker -------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    @property
    def running(self) -> bool:
        """True while the worker thread is alive."""
        return self._worker.is_alive()

    def _work(self) -> None:
        """Take batches until shutdown; on an asynchronous engine keep one batch in flight, so
        the next batch's upload overlaps the current one's inference."""
        in_flight: list[_Started] = []
        while not self._stop.is_set():
            try:
                in_flight = self._cycle(in_flight)
            except Exception as exc:  # the worker must outlive any bug in a frame
                in_flight = []
                self.log(logging.ERROR, f"worker error: {exc!r}")
            self._set_busy(bool(in_flight))
        if in_flight:
            self._finish(in_flight)
        self._set_busy(False)

    def _cycle(self, in_flight: list[_Started]) -> list[_Started]:
        """One worker cycle: take and start a batch, finish the one before; the batch left in
        flight. Its own function, so no reference to the engine outlives the cycle: once the
        worker is idle, :meth:`release` leaves the engine referenced by nothing here."""
        frames = self._slots.take(0.0 if in_flight else IDLE_WAIT_S, self.batch_wait_ms / 1e3,
                                  self.max_batch_size)
        if frames:
            self._set_busy(True)  # before reading the engine: release() waits for this batch
        engine = self._engine if frames else None
        started = self._start(frames, engine) if frames else []
        if in_flight:
            self._finish(in_flight)
        if started and not (engine is not None and engine.asynchronous):
            self._finish(started)
            return []
        return started

    def _start(self, frames: list[Frame], engine: Engine | None) -> list[_Started]:
        """Check, convert and submit ``frames`` as one batch; each frame that cannot be
        submitted is accounted for here."""
        paused = self._paused
        if paused is not None or engine is None:  # frames that slipped past put() meanwhile
            for frame in frames:
                self.accounting.drop(paused or "model_not_loaded", frame.camera)
            return []
        now_ns = self.clock_ns()
        due: list[tuple[Frame, CameraPolicy]] = []
        for frame in frames:
            try:
                policy = self.policy(frame.camera)
            except Exception as exc:  # a frame's failure must not stop the node
                self._fail(frame, exc)
                continue
            if policy.max_age_ms > 0 and self.frame_age_ms(frame, now_ns) > policy.max_age_ms:
                self.accounting.drop("stale", frame.camera)
                continue
            due.append((frame, policy))
        ready: list[tuple[Frame, Any, OutputRequest, float]] = []
        for (frame, policy), (rgb, decode_ms) in zip(due, self._convert([f for f, _ in due]), strict=True):
            try:
                if isinstance(rgb, BaseException):
                    raise rgb
                if self.before_inference is not None:
                    self.before_inference(rgb)
            except ImageRejected as exc:
                self.accounting.reject(exc.reason, frame.camera)
                continue
            except Exception as exc:  # a frame's failure must not stop the node
                self._fail(frame, exc)
                continue
            ready.append((frame, rgb, policy.outputs, decode_ms))
        if not ready:
            return []
        with self._recent_lock:
            self._recent_frames.extend(r[1] for r in ready)
        try:
            pending = engine.submit_batch([r[1] for r in ready], [r[2] for r in ready])
            return [_Started(r[0], p, r[3]) for r, p in zip(ready, pending, strict=True)]
        except Exception as exc:
            if len(ready) == 1:
                self._fail(ready[0][0], exc)
                return []
        started = []
        for frame, rgb, outputs, decode_ms in ready:  # isolate the failing frame: one at a time
            try:
                started.append(_Started(frame, engine.submit_batch([rgb], [outputs])[0], decode_ms))
            except Exception as exc:
                self._fail(frame, exc)
        return started

    def _convert(self, frames: list[Frame]) -> list[tuple[Any, float]]:
        """Each frame's RGB image (or the exception its conversion raised) and the milliseconds
        the conversion took, which is the ``decode`` stage. With ``convert_batch`` all frames go
        in one call (e.g. several cameras' JPEGs in one nvJPEG batch), each charged its share."""
        if not frames:
            return []
        if self.convert_batch is not None:
            started = time.perf_counter()
            try:
                images = self.convert_batch(frames)
            except Exception as exc:  # a bug in the batch path: convert one by one
                self.log(logging.ERROR, f"batch conversion failed, converting one by one: {exc!r}"[:300])
            else:
                share = (time.perf_counter() - started) * 1e3 / len(frames)
                return [(image, share) for image in images]
        converted: list[tuple[Any, float]] = []
        for frame in frames:
            started = time.perf_counter()
            try:
                image: Any = self.convert(frame)
            except Exception as exc:  # handed back: accounted for with its frame
                image = exc
            converted.append((image, (time.perf_counter() - started) * 1e3))
        return converted

    def _finish(self, started: list[_Started]) -> None:
        for item in started:
            frame = item.frame
            try:
                result = item.pending.result()
            except Exception as exc:
                self._fail(frame, exc)
                continue
            try:
                with self._publish_lock:
                    paused = self._paused
                    if paused is None:
                        self.publish(frame, result)
                if paused is not None:  # finished after pause(): never published
                    self.accounting.drop(paused, frame.camera)
                    continue
            except Exception as exc:  # e.g. the context shut down under us
                stopping = self._stop.is_set()
                self.accounting.drop("shutdown" if stopping else "publish_error", frame.camera)
                if not stopping:
                    self.log(logging.ERROR, f"publish failed, frame dropped: {exc!r}")
                continue
            self._processed(frame, result, item.decode_ms)

    def _processed(self, frame: Frame, result: SegmentationResult, decode_ms: float = 0.0) -> None:
        self.accounting.process(frame.camera)
        self.failures.success()
        stats = self.camera_stats[frame.camera]
        stats.output_rate.tick()
        for stage, ms in (("decode", decode_ms), ("queue", result.queue_ms), *result.timings_ms.items()):
            window = self.stage_latency.get(stage)
            if window is None:
                window = self.stage_latency.setdefault(stage, LatencyWindow(self._window))
            window.add(ms)
        self.batch_sizes.add(result.batch_size)
        age = self.frame_age_ms(frame, self.clock_ns())
        self.end_to_end.add(age)
        stats.end_to_end.add(age)

    def _fail(self, frame: Frame, exc: Exception) -> None:
        if self._stop.is_set():
            self.accounting.drop("shutdown", frame.camera)
            return
        engine = self._engine
        self.accounting.drop(engine.recover_from_failure(exc) if engine is not None else "inference_error",
                             frame.camera)
        self.failures.failure(f"{type(exc).__name__}: {exc}"[:500])
        self.log(logging.ERROR, f"inference failed, frame of camera {frame.camera!r} dropped: "
                                f"{type(exc).__name__}: {str(exc)[:300]}")

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, timeout: float) -> bool:
        """Stop the worker (it finishes the batch it holds); frames still waiting are dropped
        (``shutdown``). Waits at most ``timeout`` s in all; False when the worker is still busy."""
        started = time.monotonic()
        self._stop.set()
        for frame in self._slots.close():
            self.accounting.drop("shutdown", frame.camera)
        if self._worker.is_alive():
            self._worker.join(timeout)
        loader = self._loader
        if loader is not None:
            loader.join(max(0.0, started + timeout - time.monotonic()))
        return not self._worker.is_alive()
