"""Replay a drive bag through the segmentation engine (offline) or ``seg_node`` over DDS (live).

* ``offline`` reads frames and calls the engine directly, one after the other, as fast as it can:
  accuracy and per-stage engine latency without ROS.
* ``live`` measures the node as it runs on a car: ``seg_node`` runs as a process of its own
  (:mod:`.node_process`, with the run's parameters), and this process publishes the bag's images to
  it at the recorded rate times ``speed``, subscribes to its labels and matches them to ground
  truth by header stamp. Images are published with fresh stamps (now), so "header stamp -> labels
  received" is the end-to-end latency the car would see; a stamp -> frame map finds the ground
  truth. Before the replay the first frame is sent a few times (warm-up, not counted). The node's
  frame books and stage timings are read from its ``/diagnostics``, counted from the end of the
  warm-up, and reconciled with what came back: a frame that does not come back was dropped by the
  node (``superseded`` when the CPU cannot follow the replay rate, ``stale``, ...), rejected, lost
  on the way to the node (``transport_lost``: published minus the node's ``received``) or on the
  way back (``output_lost``). Images travel over Fast DDS shared memory (the package's large-image
  profile) with RELIABLE QoS from a reliable publisher, so transport loss is not expected; the
  evaluator asks for a reliable node subscription unless told otherwise (``--input-qos``).

DDS stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (unless set), on one domain
id shared by the node process and this one.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import params as P
from ..cityscapes import train_ids_to_label_ids
from ..engine import STAGES, SegmentationEngine
from ..image_conversion import ImageRejected, check_image, image_msg_to_rgb
from ..stats import percentiles
from . import report as R
from .bag_io import BagFrame, DriveBag
from .metrics import NUM_CLASSES, ConfusionMatrix
from .node_process import NodeProcess, NodeStartError, books_delta, parse_diagnostics, use_large_image_transport

LOG = logging.getLogger(__name__)

MODES = ("live", "offline")
#: Bounded waits of a live run (seconds). Starting the node includes importing torch and building
#: the model, which takes tens of seconds on a loaded small CPU.
NODE_START_TIMEOUT_S = 180.0
WARMUP_TIMEOUT_S = 60.0
STRAGGLER_TIMEOUT_S = 30.0
STRAGGLER_IDLE_S = 3.0
#: Frames sent before the replay so the node has met the bag's frame size.
WARMUP_FRAMES = 3
#: The node's diagnostics period during a live run: the books are read from them.
DIAGNOSTICS_PERIOD_S = 0.25
#: History of the replay publisher and the labels subscription (frames of slack, about 3 s at 17 Hz).
REPLAY_QOS_DEPTH = 50
LABELS_TOPIC = "segmentation/labels"
#: The name of the node's entry in /diagnostics.
NODE_STATUS_NAME = "seg_perception: /seg_node"


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
        targets = np.linspace(0, total_frames - 1, count) if count else []
        self._overlay_targets = sorted({int(round(v)) for v in targets})
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
            if matrix.sum():
                record.pixel_accuracy = float(np.trace(matrix) / matrix.sum())
                self._outputs(frame, labels)
            else:  # every pixel is an ignored label: nothing was evaluated on this frame
                record.status, record.reason = "not_evaluated", "gt_no_valid_pixel"
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
        "engine_total_ms": percentiles([sum(t) for t in zip(*stages.values(), strict=True)]) if processed else None,
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


class _Probe:
    """The evaluator's end of DDS: publishes the bag's images, collects labels and the node's
    ``/diagnostics``. Its callbacks run on an executor thread of this process; the node runs in
    its own process, so nothing here competes with the node for a GIL."""

    def __init__(self, context: Any, image_topic: str, labels_topic: str, image_type: type) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.image_type = image_type
        self.results: queue.Queue = queue.Queue()
        self.publisher_matched = threading.Event()
        self.labels_matched = threading.Event()
        self.collector_lost = 0
        self._diagnostics: tuple[int, dict[str, Any]] | None = None
        self._diagnostics_cond = threading.Condition()
        self.node = Node("seg_eval_replay", context=context)
        qos = QoSProfile(depth=REPLAY_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
        self.publisher = self.node.create_publisher(
            image_type, image_topic, qos,
            event_callbacks=PublisherEventCallbacks(
                matched=lambda info: info.current_count > 0 and self.publisher_matched.set()))
        self.node.create_subscription(
            Image, labels_topic, self._on_labels, qos,
            event_callbacks=SubscriptionEventCallbacks(
                matched=lambda info: info.current_count > 0 and self.labels_matched.set(),
                message_lost=self._on_lost))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _on_labels(self, msg: Any) -> None:
        received_ns = self.now_ns()
        labels = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width]
        self.results.put((received_ns, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, labels))

    def _on_lost(self, info: Any) -> None:
        self.collector_lost += info.total_count_change

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == NODE_STATUS_NAME:
                parsed = parse_diagnostics({kv.key: kv.value for kv in status.values})
                with self._diagnostics_cond:
                    seq = self._diagnostics[0] + 1 if self._diagnostics else 1
                    self._diagnostics = (seq, parsed)
                    self._diagnostics_cond.notify_all()

    def diagnostics(self, after: int = 0, timeout: float = 0.0) -> tuple[int, dict[str, Any] | None]:
        """The newest parsed report later than sequence number ``after`` (waiting up to
        ``timeout``), as (sequence number, report); (after, None) when none came."""
        with self._diagnostics_cond:
            self._diagnostics_cond.wait_for(lambda: self._diagnostics and self._diagnostics[0] > after, timeout)
            if self._diagnostics and self._diagnostics[0] > after:
                return self._diagnostics
            return after, None


def _stamp(msg: Any, stamp_ns: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)


def _settled(books: dict[str, Any], received: int) -> bool:
    """The node has received ``received`` frames and finished with all of them."""
    return books["received"] >= received and books["in_flight"] == 0


def _wait_for_node(node: NodeProcess, probe: _Probe, timeout: float) -> float:
    """Seconds until the node process is up, matched on both topics and publishing diagnostics."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not node.alive():
            raise NodeStartError(f"seg_node exited with code {node.stop()} before it was ready; its log "
                                 f"({node.log_path}) ends with:\n{node.log_tail()}")
        if probe.publisher_matched.is_set() and probe.labels_matched.is_set() \
                and probe.diagnostics(timeout=0.2)[1] is not None:
            return time.monotonic() - started
        time.sleep(0.05)
    raise NodeStartError(
        f"seg_node did not appear on DDS within {timeout:.0f} s (domain {os.environ.get('ROS_DOMAIN_ID')}, "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}); its log "
        f"({node.log_path}) ends with:\n{node.log_tail()}")


def _warm_up(first: BagFrame, probe: _Probe, count: int) -> tuple[int, dict[str, Any]]:
    """Send the first frame ``count`` times, one at a time, so the node has met the bag's frame size
    (lazy initialisation, allocator growth) before the measured replay, as it would have on a car
    after its first second. Returns the diagnostics sequence number and the books after warm-up,
    which the replay's books are counted from."""
    seq = 0
    for sent in range(1, count + 1):
        msg = _image_message(first, probe.image_type)
        stamp = probe.now_ns()
        _stamp(msg, stamp)
        probe.publisher.publish(msg)
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while time.monotonic() < deadline:  # its labels, or the node's word that it is done with it
            try:
                if probe.results.get(timeout=0.1)[1] == stamp:
                    break
            except queue.Empty:
                pass
            seq, report = probe.diagnostics(seq)
            if report is not None and _settled(report["books"], sent) and report["books"]["processed"] < sent:
                break
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while time.monotonic() < deadline:
        seq, report = probe.diagnostics(seq, timeout=1.0)
        if report is not None and _settled(report["books"], count):
            break
    else:
        raise NodeStartError(f"seg_node did not settle its {count} warm-up frames within {WARMUP_TIMEOUT_S:.0f} s")
    while not probe.results.empty():
        probe.results.get_nowait()
    return seq, report["books"]


def run_live(bag: DriveBag, node_params: dict[str, Any], ledger: Ledger, speed: float = 1.0,
             domain_id: int | None = None, progress: bool = True, threads: int | None = None,
             seed: int | None = None, warmup_frames: int = WARMUP_FRAMES,
             start_timeout: float = NODE_START_TIMEOUT_S) -> dict[str, Any]:
    """Replay the bag through a ``seg_node`` process over DDS; see the module docstring.

    ``node_params`` are the node's parameters (written to ``<out>/node_params.yaml``); ``threads``
    sets the node's torch threads (``OMP_NUM_THREADS``); ``seed`` seeds torch in the node before it
    builds its model (for untrained models, so they match an offline run).
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = use_large_image_transport()  # before this process creates its first participant
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image

    frames = bag.frames()
    first = next(frames, None)
    if first is None:
        raise ValueError(f"bag {bag.path} has no readable frames on {bag.info.image_topic}")
    domain = pick_domain_id(domain_id)
    params = {**node_params, "diagnostics_period": DIAGNOSTICS_PERIOD_S}
    image_topic = params.get("image_topic", P.defaults()["image_topic"])
    compressed = getattr(bag.info, "image_transport", "raw") == "compressed"
    if compressed:  # published as recorded; the node decodes, as it would on the car
        if "image_transport" not in P.PARAMS_BY_NAME:
            raise ValueError(f"{bag.info.image_topic} holds compressed images but this seg_node has no "
                             f"image_transport parameter; evaluate the bag with --mode offline")
        params["image_transport"] = "compressed"
        image_topic = f"{image_topic}/compressed"
    node = NodeProcess(params, ledger.out, domain, threads, seed)
    context = Context()
    context.init(args=[], domain_id=domain)
    probe = executor = spin_thread = None
    try:
        probe = _Probe(context, image_topic, LABELS_TOPIC, CompressedImage if compressed else Image)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(probe.node)
        spin_thread = threading.Thread(target=executor.spin, name="seg_eval_executor", daemon=True)
        spin_thread.start()
        discovery_s = _wait_for_node(node, probe, start_timeout)
        seq, baseline = _warm_up(first, probe, warmup_frames)
        max_pixels = int(params.get("max_pixels", P.defaults()["max_pixels"]))
        window = int(params.get("latency_window", P.defaults()["latency_window"]))
        stats = _replay(first, frames, bag, probe, seq, baseline, ledger, speed, max_pixels, window, progress)
        stats["dds"] = {"domain_id": domain, "discovery_s": discovery_s,
                        "discovery_range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"),
                        "rmw": rclpy.get_rmw_implementation_identifier(), "fastdds_profile": profile,
                        "replay_qos": f"reliable, keep last {REPLAY_QOS_DEPTH}",
                        "node_input_qos": f"{params.get('qos_reliability', 'best_effort')}, keep last "
                                          f"{params.get('qos_depth', 5)}"}
        stats["warmup_frames"] = warmup_frames
    finally:
        exit_code = node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=2.0)
        if probe is not None:
            probe.node.destroy_node()
        context.try_shutdown()
    stats["node_process"] = {"command": node.command, "exit_code": exit_code, "stop_s": node.stop_s,
                             "log": str(node.log_path), "params_file": str(node.params_file)}
    return stats


def _is_compressed(image: Any) -> bool:
    return hasattr(image, "format") and not hasattr(image, "encoding")


def _image_message(frame: BagFrame, image_cls: type) -> Any:
    """An rclpy Image (or CompressedImage) with the bag message's data and fields, as recorded
    (stamp set at publish time)."""
    src = frame.image
    if _is_compressed(src):
        msg = image_cls(format=str(src.format))
        msg.header.frame_id = frame.frame_id
        msg.data = np.asarray(src.data, dtype=np.uint8).tobytes()
        return msg
    msg = image_cls(height=int(src.height), width=int(src.width), encoding=str(src.encoding),
                    is_bigendian=int(src.is_bigendian), step=int(src.step))
    msg.header.frame_id = frame.frame_id
    msg.data = np.asarray(src.data, dtype=np.uint8).tobytes()
    return msg


def _replay(first: BagFrame, rest: Any, bag: DriveBag, probe: _Probe, seq: int, baseline: dict[str, Any],
            ledger: Ledger, speed: float, max_pixels: int, latency_window: int,
            progress: bool) -> dict[str, Any]:
    """Publish on the recorded schedule, match outputs as they come, then wait for stragglers."""
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
                received_ns, stamp_ns, labels = probe.results.get(timeout=timeout)
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
        if _is_compressed(entry.frame.image):  # only the node's decoder knows; its books say why
            ledger.missing(entry.frame, "dropped", None, entry.sent_s)
            return
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
        msg = _image_message(frame, probe.image_type)
        due = start + (frame.stamp_ns - first.stamp_ns) / 1e9 / speed
        while True:  # match outputs while waiting for this frame's time
            wait = due - time.monotonic()
            if wait <= 0:
                break
            drain(timeout=min(wait, 0.05))
        stamp = max(probe.now_ns(), last_stamp + 1)  # unique stamps, so matching is unambiguous
        last_stamp = stamp
        _stamp(msg, stamp)
        pending[stamp] = _Pending(frame, time.monotonic() - start)
        probe.publisher.publish(msg)
        published += 1
        bar.update(1)
        drain()
    replay_s = time.monotonic() - start

    # Stragglers: wait until the node's books say it received and settled every frame and we hold
    # all its outputs, or until nothing has moved for a while (frames lost before the node).
    books, final = books_delta(baseline, baseline), None
    deadline = time.monotonic() + STRAGGLER_TIMEOUT_S
    last_progress, last_key = time.monotonic(), None
    while time.monotonic() < deadline:
        drain(timeout=0.05)
        seq, report = probe.diagnostics(seq)
        if report is None:
            continue
        books, final = books_delta(report["books"], baseline), report
        returned = ledger.counts()["evaluated"] + ledger.counts()["not_evaluated"]
        settled = _settled(books, 0) and returned >= books["processed"] - probe.collector_lost
        if settled and books["received"] >= published:
            break
        key = (books["received"], books["processed"], returned)
        if key != last_key:
            last_key, last_progress = key, time.monotonic()
        elif settled and time.monotonic() - last_progress > STRAGGLER_IDLE_S:
            break
    drain()
    for stamp in sorted(pending):
        _give_up(pending.pop(stamp))
    bar.set_postfix(ledger.counts(), refresh=False)
    bar.close()
    returned = ledger.counts()["evaluated"] + ledger.counts()["not_evaluated"]
    transport_lost = max(0, published - books["received"])
    output_lost = max(0, books["processed"] - returned)
    not_returned = published - returned
    explained = books["dropped_total"] + books["rejected_total"] + transport_lost + output_lost
    output_span = (last_result_s - first_result_s) if returned > 1 else 0.0
    stages = final["stages"] if final else {}
    window = min(latency_window, int(baseline["processed"]) + books["processed"])
    return {
        "published": published,
        "results_received": returned,
        "unexpected_outputs": unexpected,
        "collector_lost": probe.collector_lost,
        "node_accounting": books,
        "transport_lost": transport_lost,
        "output_lost": output_lost,
        "reconciliation": {
            "not_returned": not_returned,
            "explained_by_node_and_transport": explained,
            "node_processed_equals_returned": books["processed"] == returned,
            "all_accounted": not_returned == explained and books["in_flight"] == 0,
        },
        "stages_ms": {s: _node_window(stages.get(s), window) for s in STAGES},
        "node_end_to_end_ms": _node_window(stages.get("end_to_end"), window),
        "frame_latency_ms": percentiles(e2e),
        "frame_latency_kind": "end-to-end: header stamp (set at publish) -> labels received",
        "throughput_fps": (returned - 1) / output_span if output_span > 0 else 0.0,
        "input_fps": (published - 1) / replay_s if replay_s > 0 and published > 1 else 0.0,
        "speed": speed,
        "replay_s": replay_s,
        "first_result_s": first_result_s,
        "engine": report_engine(final),
    }


def report_engine(report: dict[str, Any] | None) -> dict[str, Any]:
    """The engine description the node published, with every field the report prints."""
    engine = dict((report or {}).get("engine") or {})
    engine.setdefault("parameters", 0)
    for key in ("model", "variant", "device", "precision", "weights"):
        engine.setdefault(key, "?")
    return engine


def _node_window(summary: dict[str, float] | None, count: int) -> dict[str, float] | None:
    """Percentiles from the node's diagnostics over the ``count`` frames of its latency window
    (warm-up frames included until the replay's frames push them out)."""
    return None if not summary or not count else {**summary, "count": count}

def _summary(window: dict[str, float]) -> dict[str, float] | None:
    return None if not window.get("count") else dict(window)


def check_model_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise ValueError(f"Cityscapes evaluation needs a 19-class model (train ids); num_classes is {num_classes}")


def records_as_dicts(records: list[FrameRecord]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
            for r in sorted(records, key=lambda r: r.index)]
