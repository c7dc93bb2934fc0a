"""Replay a drive bag through the segmentation engine (offline) or the node over DDS (live).

* ``offline`` reads frames and calls the engine directly, one after the other, as fast as it can:
  accuracy and per-stage engine latency without ROS.
* ``live`` starts :class:`~seg_perception.node.SegmentationNode` (the code ``seg_node`` runs) in
  this process, publishes the bag's images to it over DDS at the recorded rate times ``speed``,
  subscribes to its labels and matches them to ground truth by header stamp. Images are published
  with fresh stamps (now), so "header stamp -> labels received" is the end-to-end latency the car
  would see; a stamp -> frame map finds the ground truth. Replay and collection use RELIABLE QoS,
  so a frame that does not come back was dropped by the node (superseded, stale, rejected, ...),
  or lost in transport when the node subscribes best-effort; the node's own frame accounting is
  read at the end and every frame of the bag is accounted for.

DDS stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (unless set) and a private
:class:`rclpy.context.Context` on its own domain id shared by the node and the replay node.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cityscapes import train_ids_to_label_ids
from ..engine import STAGES, SegmentationEngine
from ..image_conversion import ImageRejected, check_image, image_msg_to_rgb
from ..stats import percentiles
from . import report as R
from .bag_io import BagFrame, DriveBag
from .metrics import NUM_CLASSES, ConfusionMatrix

LOG = logging.getLogger(__name__)

MODES = ("live", "offline")
#: Bounded waits of a live run (seconds).
DISCOVERY_TIMEOUT_S = 15.0
SETTLE_S = 0.3
STRAGGLER_TIMEOUT_S = 20.0
STRAGGLER_IDLE_S = 2.0


@dataclass
class FrameRecord:
    """What happened to one frame of the bag."""

    index: int
    stamp_ns: int
    #: evaluated | not_evaluated (labels came back, ground truth unusable) | dropped | rejected
    status: str
    reason: str | None = None
    #: live: header stamp -> labels received; offline: wall time of one engine call.
    latency_ms: float | None = None
    #: Seconds from the start of the replay when the frame was sent (live) or started (offline).
    sent_s: float | None = None
    pixel_accuracy: float | None = None


class Ledger:
    """Collects per-frame outcomes, the confusion matrix and the report's images as frames end."""

    def __init__(self, out: Path, total_frames: int, overlays: int = 4, save_predictions: bool = False,
                 video: bool = False, rate_hz: float = 17.0) -> None:
        self.out = out
        self.records: list[FrameRecord] = []
        self.confusion = ConfusionMatrix()
        self.overlay_files: list[str] = []
        self.prediction_files: list[str] = []
        count = max(0, min(overlays, total_frames))
        self._overlay_targets = sorted({int(round(v)) for v in np.linspace(0, total_frames - 1, count)}) if count else []
        self._save_predictions = save_predictions
        self._video_path = out / "overlay.mp4" if video else None
        self._video: Any = None
        self._rate = rate_hz

    def counts(self) -> dict[str, int]:
        out = {"evaluated": 0, "not_evaluated": 0, "dropped": 0, "rejected": 0}
        for record in self.records:
            out[record.status] += 1
        return out

    def result(self, frame: BagFrame, labels: np.ndarray, latency_ms: float, sent_s: float) -> FrameRecord:
        """Labels came back for ``frame``: evaluate them if its ground truth is usable."""
        record = FrameRecord(frame.index, frame.stamp_ns, "evaluated", latency_ms=latency_ms, sent_s=sent_s)
        if frame.gt is None:
            record.status, record.reason = "not_evaluated", frame.gt_problem
        elif labels.shape != frame.gt.shape:
            record.status, record.reason = "not_evaluated", "prediction_size_mismatch"
        else:
            matrix = self.confusion.update_label_ids(labels, frame.gt)
            record.pixel_accuracy = float(np.trace(matrix) / matrix.sum()) if matrix.sum() else None
            self._outputs(frame, labels)
        self.records.append(record)
        return record

    def missing(self, frame: BagFrame, status: str, reason: str | None, sent_s: float | None) -> FrameRecord:
        record = FrameRecord(frame.index, frame.stamp_ns, status, reason, sent_s=sent_s)
        self.records.append(record)
        return record

    def _outputs(self, frame: BagFrame, labels: np.ndarray) -> None:
        """Prediction PNG, overlay image and video frame of an evaluated frame, as requested."""
        if self._save_predictions:
            path = self.out / "predictions" / f"{frame.index:06d}_pred_labelIds.png"
            R.write_png(path, train_ids_to_label_ids(labels))
            self.prediction_files.append(str(path.relative_to(self.out)))
        wants_overlay = bool(self._overlay_targets) and frame.index >= self._overlay_targets[0]
        if not (wants_overlay or self._video_path):
            return
        panel = R.overlay_panel(image_msg_to_rgb(frame.image), labels, frame.gt, frame.index)
        if wants_overlay:
            while self._overlay_targets and self._overlay_targets[0] <= frame.index:
                self._overlay_targets.pop(0)
            path = self.out / "overlays" / f"frame_{frame.index:06d}.png"
            R.write_png(path, panel)
            self.overlay_files.append(str(path.relative_to(self.out)))
        if self._video_path:
            if self._video is None:
                self._video = R.VideoWriter(self._video_path, self._rate, panel.shape)
            self._video.write(panel)

    def close(self) -> str | None:
        if self._video is None:
            return None
        self._video.close()
        return str(self._video_path.relative_to(self.out))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled)


# -- offline ----------------------------------------------------------------------------------

def run_offline(bag: DriveBag, engine: SegmentationEngine, ledger: Ledger, max_pixels: int,
                progress: bool = True) -> dict[str, Any]:
    """Every frame through the engine in order; timing is the engine's own per-stage timing."""
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    walls: list[float] = []
    bar = _progress(bag.info.image_count, "eval offline", progress)
    start = time.perf_counter()
    for frame in bag.frames():
        sent = time.perf_counter() - start
        try:
            rgb = image_msg_to_rgb(frame.image, max_pixels)
        except ImageRejected as exc:
            ledger.missing(frame, "rejected", exc.reason, sent)
        else:
            if not rgb.flags.writeable:  # a view of the bag's buffer; torch wants writable memory
                rgb = rgb.copy()
            t0 = time.perf_counter()
            try:
                result = engine.infer(rgb)
            except Exception as exc:  # noqa: BLE001 - the node drops such a frame; so do we
                LOG.error("inference failed on frame %d: %s: %s", frame.index, type(exc).__name__, exc)
                ledger.missing(frame, "dropped", "inference_error", sent)
            else:
                wall = (time.perf_counter() - t0) * 1e3
                walls.append(wall)
                for stage, ms in result.timings_ms.items():
                    stages[stage].append(ms)
                ledger.result(frame, result.labels, wall, sent)
        bar.update(1)
        bar.set_postfix(ledger.counts(), refresh=False)
    elapsed = time.perf_counter() - start
    bar.close()
    processed = len(walls)
    return {
        "stages_ms": {s: percentiles(v) for s, v in stages.items()},
        "engine_total_ms": percentiles([sum(t) for t in zip(*stages.values())]) if processed else None,
        "frame_latency_ms": percentiles(walls),
        "frame_latency_kind": "wall time of one engine call (offline)",
        "throughput_fps": processed / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
    }


# -- live -------------------------------------------------------------------------------------

def pick_domain_id(explicit: int | None = None) -> int:
    """The domain of a live run: explicit, else ``ROS_DOMAIN_ID``, else one derived from the pid."""
    if explicit is not None:
        return explicit
    env = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(env) if env.isdigit() else 1 + os.getpid() % 100


@dataclass
class _Pending:
    frame: BagFrame
    sent_s: float


@dataclass
class _LiveState:
    """What the executor threads share with the replay loop."""

    results: queue.Queue = field(default_factory=queue.Queue)
    publisher_matched: threading.Event = field(default_factory=threading.Event)
    subscription_matched: threading.Event = field(default_factory=threading.Event)
    collector_lost: int = 0


def run_live(bag: DriveBag, node_overrides: dict[str, Any], ledger: Ledger, speed: float = 1.0,
             domain_id: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Replay the bag through a :class:`SegmentationNode` over DDS; see the module docstring."""
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.context import Context
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ..node import SegmentationNode

    frames = bag.frames()
    first = next(frames, None)
    if first is None:
        raise ValueError(f"bag {bag.path} has no readable frames on {bag.info.image_topic}")
    domain = pick_domain_id(domain_id)
    context = Context()
    context.init(args=[], domain_id=domain)
    state = _LiveState()
    node = replay = executor = spin_thread = None
    try:
        node = SegmentationNode(context=context,
                                parameter_overrides=[Parameter(k, value=v) for k, v in node_overrides.items()])
        if node.scheduler.engine is None:
            raise ValueError(f"the node could not load its model: {node.startup_error}")
        max_pixels = node.values["max_pixels"]
        try:  # warm the engine at the bag's frame size, as a node would be after its first frames
            size = image_msg_to_rgb(first.image, max_pixels).shape[:2]
            node.scheduler.engine.warmup(*size)
        except ImageRejected:
            pass
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        replay = Node("seg_eval_replay", context=context)
        publisher = replay.create_publisher(
            Image, node.subscription.topic_name, qos,
            event_callbacks=PublisherEventCallbacks(
                matched=lambda info: info.current_count > 0 and state.publisher_matched.set()),
        )

        def collect(msg: Any) -> None:
            received_ns = replay.get_clock().now().nanoseconds
            labels = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width]
            state.results.put((received_ns, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                               labels))

        def lost(info: Any) -> None:
            state.collector_lost += info.total_count_change

        replay.create_subscription(
            Image, node.labels_pub.topic_name, collect, qos,
            event_callbacks=SubscriptionEventCallbacks(
                matched=lambda info: info.current_count > 0 and state.subscription_matched.set(),
                message_lost=lost),
        )
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        executor.add_node(node)
        executor.add_node(replay)
        spin_thread = threading.Thread(target=executor.spin, name="seg_eval_executor", daemon=True)
        spin_thread.start()

        t_discovery = time.monotonic()
        if not (state.publisher_matched.wait(DISCOVERY_TIMEOUT_S)
                and state.subscription_matched.wait(DISCOVERY_TIMEOUT_S)):
            raise RuntimeError(
                f"DDS discovery failed within {DISCOVERY_TIMEOUT_S:.0f} s on domain {domain} "
                f"(ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')})"
            )
        time.sleep(SETTLE_S)
        discovery_s = time.monotonic() - t_discovery
        stats = _replay(first, frames, bag, node, replay, publisher, state, ledger, speed, max_pixels, progress)
        stats["engine"] = node.scheduler.engine.description
        stats["dds"] = {"domain_id": domain, "discovery_s": discovery_s,
                        "discovery_range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"),
                        "rmw": rclpy.get_rmw_implementation_identifier()}
        return stats
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=2.0)
        for n in (replay, node):
            if n is not None:
                n.destroy_node()
        context.try_shutdown()


def _image_message(frame: BagFrame, image_cls: type) -> Any:
    """An rclpy Image with the bag message's pixels and fields (stamp set at publish time)."""
    src = frame.image
    msg = image_cls(height=int(src.height), width=int(src.width), encoding=str(src.encoding),
                    is_bigendian=int(src.is_bigendian), step=int(src.step))
    msg.header.frame_id = frame.frame_id
    msg.data = np.asarray(src.data, dtype=np.uint8).tobytes()
    return msg


def _replay(first: BagFrame, rest: Any, bag: DriveBag, node: Any, replay: Any, publisher: Any,
            state: _LiveState, ledger: Ledger, speed: float, max_pixels: int, progress: bool) -> dict[str, Any]:
    """Publish on the recorded schedule, match outputs as they come, then wait for stragglers."""
    from sensor_msgs.msg import Image

    pending: dict[int, _Pending] = {}  # publish stamp -> frame, in publish order
    e2e: list[float] = []
    unexpected = 0
    published = 0
    last_stamp = 0
    bar = _progress(bag.info.image_count, f"eval live x{speed:g}", progress)
    start = time.monotonic()
    first_result_s = last_result_s = None

    def drain(timeout: float = 0.0) -> int:
        nonlocal unexpected, first_result_s, last_result_s
        handled = 0
        while True:
            try:
                received_ns, stamp_ns, labels = state.results.get(timeout=timeout)
            except queue.Empty:
                return handled
            timeout = 0.0
            handled += 1
            entry = pending.pop(stamp_ns, None)
            if entry is None:
                unexpected += 1
                continue
            # The node answers in order, so older frames still pending will never come back.
            for older in [s for s in pending if s < stamp_ns]:
                _give_up(pending.pop(older))
            latency = (received_ns - stamp_ns) / 1e6
            e2e.append(latency)
            now_s = time.monotonic() - start
            first_result_s = now_s if first_result_s is None else first_result_s
            last_result_s = now_s
            ledger.result(entry.frame, labels, latency, entry.sent_s)
            bar.set_postfix(ledger.counts(), refresh=False)

    def _give_up(entry: _Pending) -> None:
        try:
            check_image(entry.frame.image.encoding, entry.frame.image.height, entry.frame.image.width,
                        entry.frame.image.step, entry.frame.image.data, entry.frame.image.is_bigendian,
                        max_pixels)
        except ImageRejected as exc:
            ledger.missing(entry.frame, "rejected", exc.reason, entry.sent_s)
        else:
            ledger.missing(entry.frame, "dropped", None, entry.sent_s)

    def frames_iter() -> Any:
        yield first
        yield from rest

    for frame in frames_iter():
        msg = _image_message(frame, Image)
        due = start + (frame.stamp_ns - first.stamp_ns) / 1e9 / speed
        while True:  # match outputs while waiting for this frame's time
            wait = due - time.monotonic()
            if wait <= 0:
                break
            drain(timeout=min(wait, 0.05))
        stamp = replay.get_clock().now().nanoseconds
        stamp = max(stamp, last_stamp + 1)  # unique stamps, so matching is unambiguous
        last_stamp = stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        pending[stamp] = _Pending(frame, time.monotonic() - start)
        publisher.publish(msg)
        published += 1
        bar.update(1)
        drain()
    replay_s = time.monotonic() - start

    # Stragglers: wait until the node has settled every frame it received and we hold all its
    # outputs, or until nothing has moved for a while (frames lost before reaching the node).
    deadline = time.monotonic() + STRAGGLER_TIMEOUT_S
    last_progress, last_books = time.monotonic(), None
    books = node.scheduler.accounting.snapshot()
    while time.monotonic() < deadline:
        drain(timeout=0.05)
        books = node.scheduler.accounting.snapshot()
        results = ledger.counts()["evaluated"] + ledger.counts()["not_evaluated"]
        settled = books["in_flight"] == 0 and results >= books["processed"]
        if settled and books["received"] >= published:
            break
        if (books["received"], books["processed"], results) != last_books:
            last_books, last_progress = (books["received"], books["processed"], results), time.monotonic()
        elif settled and time.monotonic() - last_progress > STRAGGLER_IDLE_S:
            break
    drain()
    for stamp in sorted(pending):
        _give_up(pending.pop(stamp))
    bar.set_postfix(ledger.counts(), refresh=False)
    bar.close()
    books = node.scheduler.accounting.snapshot()
    returned = ledger.counts()["evaluated"] + ledger.counts()["not_evaluated"]
    transport_lost = max(0, published - books["received"])
    not_returned = published - returned
    explained = books["dropped_total"] + books["rejected_total"] + transport_lost
    output_span = (last_result_s - first_result_s) if returned > 1 else 0.0
    return {
        "published": published,
        "results_received": returned,
        "unexpected_outputs": unexpected,
        "collector_lost": state.collector_lost,
        "node_accounting": books,
        "transport_lost": transport_lost,
        "reconciliation": {
            "not_returned": not_returned,
            "explained_by_node_and_transport": explained,
            "node_processed_equals_returned": books["processed"] == returned,
            "all_accounted": not_returned == explained and books["processed"] == returned
                             and books["in_flight"] == 0,
        },
        "stages_ms": {s: _summary(w.summary()) for s, w in list(node.scheduler.stage_latency.items())},
        "node_end_to_end_ms": _summary(node.scheduler.end_to_end.summary()),
        "frame_latency_ms": percentiles(e2e),
        "frame_latency_kind": "end-to-end: header stamp (set at publish) -> labels received",
        "throughput_fps": (returned - 1) / output_span if output_span > 0 else 0.0,
        "input_fps": (published - 1) / replay_s if replay_s > 0 and published > 1 else 0.0,
        "speed": speed,
        "replay_s": replay_s,
        "first_result_s": first_result_s,
    }


def _summary(window: dict[str, float]) -> dict[str, float] | None:
    return None if not window.get("count") else dict(window)


def check_model_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise ValueError(f"Cityscapes evaluation needs a 19-class model (train ids); num_classes is {num_classes}")


def records_as_dicts(records: list[FrameRecord]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
            for r in sorted(records, key=lambda r: r.index)]
