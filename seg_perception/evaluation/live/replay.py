"""Replay drive bags through ``seg_node`` over DDS, on the recorded schedule, and account for
every frame.

``seg_node`` runs as a process of its own (:mod:`.node_process`, with the run's parameters), and
this process (:mod:`.probe`) publishes the bag's images to it at the recorded rate times
``speed``, subscribes to its labels and matches them to ground truth by header stamp. Images are
published with fresh stamps (now), so "header stamp -> labels received" is the end-to-end latency
the car would see; a stamp -> frame map finds the ground truth. Before the replay the first frame
is sent a few times (warm-up, not counted). The node's frame books and stage timings are read from
its ``/diagnostics``, counted from the end of the warm-up, and reconciled with what came back: a
frame that does not come back was dropped by the node (``superseded`` when the CPU cannot follow
the replay rate, ``stale``, ...), rejected, lost on the way to the node (``transport_lost``:
published minus the node's ``received``) or on the way back (``output_lost``). Images travel over
Fast DDS shared memory (the package's large-image profile) with RELIABLE QoS from a reliable
publisher, so transport loss is not expected; the evaluator asks for a reliable node subscription
unless told otherwise (``--input-qos``).

One camera runs the node in its single-camera mode; several cameras (:func:`run_live_cameras`)
run ONE node with ``cameras: [...]`` and each camera's ``<camera>.image_topic`` set to its bag
topic; frames of all cameras are published in stamp order and each camera is reconciled with its
own status on ``/diagnostics``. A compressed bag is published as recorded
(``sensor_msgs/CompressedImage`` on ``<image_topic>/compressed``) to a node started with
``image_transport: compressed``, so the node decodes it as it would on the car.

DDS stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (unless set), on one domain
id shared by the node process and this one.
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import params as P
from ...compressed import check_compressed, is_compressed
from ...engine import STAGES
from ...image_conversion import ImageRejected, check_image
from ...stats import percentiles
from ..bag_io import BagFrame, DriveBag
from ..ledger import Ledger
from .node_process import NodeProcess, NodeStartError, books_delta, use_large_image_transport
from .probe import NODE_STATUS_NAME, REPLAY_QOS_DEPTH, Probe, stamp_message

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
#: The node's input history in a reliable live run: when its executor is starved of CPU, frames
#: wait in the reader queue and reach the latest-frame slot (counted ``superseded``) instead of
#: being overwritten in a keep-last-5 queue before the node sees them.
LIVE_INPUT_DEPTH = 20
LABELS_TOPIC = "segmentation/labels"


def pick_domain_id(explicit: int | None = None) -> int:
    """The domain of a live run: explicit, else ``ROS_DOMAIN_ID``, else one derived from the pid."""
    if explicit is not None:
        return explicit
    env = os.environ.get("ROS_DOMAIN_ID", "").strip()
    return int(env) if env.isdigit() else 1 + os.getpid() % 100


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled)


@dataclass
class _Pending:
    frame: BagFrame
    sent_s: float


@dataclass
class LiveCamera:
    """One camera of a live run: the bag it replays and the ledger its frames end in. ``name``
    None is the node's single-camera mode (``image_topic``, ``segmentation/labels``)."""

    name: str | None
    bag: DriveBag
    ledger: Ledger

    @property
    def compressed(self) -> bool:
        return getattr(self.bag.info, "image_transport", "raw") == "compressed"

    def topics(self, params: dict[str, Any]) -> tuple[str, str]:
        """(image topic to publish on, labels topic to collect from), relative like the node's."""
        if self.name is None:
            image, labels = params.get("image_topic", P.defaults()["image_topic"]), LABELS_TOPIC
        else:
            image, labels = params[f"{self.name}.image_topic"], f"{self.name}/{LABELS_TOPIC}"
        return (f"{image}/compressed" if self.compressed else image), labels

    def status_name(self) -> str:
        return NODE_STATUS_NAME if self.name is None else f"{NODE_STATUS_NAME} camera {self.name}"


def admission_check(image: Any, max_pixels: int) -> None:
    """The checks the node runs on a message when it arrives, before the worker converts it
    (:func:`~seg_perception.image_conversion.check_image`,
    :func:`~seg_perception.compressed.check_compressed`); raises their :class:`ImageRejected`."""
    if is_compressed(image):
        check_compressed(image.format, image.data, max_pixels)
    else:
        check_image(image.encoding, image.height, image.width, image.step, image.data, image.is_bigendian,
                    max_pixels)


def _settled(books: dict[str, Any], received: int) -> bool:
    """The node has received ``received`` frames and finished with all of them."""
    return books["received"] >= received and books["in_flight"] == 0


def _camera_books(statuses: dict[str, dict[str, Any]], cameras: list[LiveCamera]) -> list[dict[str, Any]] | None:
    """Each camera's books from one diagnostics message (None when a camera's status is missing)."""
    found = [statuses.get(camera.status_name()) for camera in cameras]
    return None if any(s is None for s in found) else [s["books"] for s in found]


def _engine_status(statuses: dict[str, dict[str, Any]] | None, multi: bool) -> dict[str, Any] | None:
    """The status with the engine's stage timings: the single one, or ``<node> engine``."""
    return (statuses or {}).get(f"{NODE_STATUS_NAME} engine" if multi else NODE_STATUS_NAME)


def _wait_for_node(node: NodeProcess, probe: Probe, timeout: float) -> float:
    """Seconds until the node process is up, matched on every topic and publishing diagnostics."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not node.alive():
            raise NodeStartError(f"seg_node exited with code {node.stop()} before it was ready; its log "
                                 f"({node.log_path}) ends with:\n{node.log_tail()}")
        if probe.matched() and probe.diagnostics(timeout=0.2)[1] is not None:
            return time.monotonic() - started
        time.sleep(0.05)
    raise NodeStartError(
        f"seg_node did not appear on DDS within {timeout:.0f} s (domain {os.environ.get('ROS_DOMAIN_ID')}, "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}); its log "
        f"({node.log_path}) ends with:\n{node.log_tail()}")


def _warm_up(firsts: list[BagFrame], cameras: list[LiveCamera], probe: Probe,
             count: int) -> tuple[int, list[dict[str, Any]]]:
    """Send each camera's first frame ``count`` times, one at a time, so the node has met the
    bag's frame sizes (lazy initialisation, allocator growth) before the measured replay, as it
    would have on a car after its first second. Returns the diagnostics sequence number and each
    camera's books after warm-up, which the replay's books are counted from."""
    seq = 0
    for sent in range(1, count + 1):
        for index, first in enumerate(firsts):
            msg = _image_message(first, probe.image_types[index])
            stamp = probe.now_ns()
            stamp_message(msg, stamp)
            probe.publishers[index].publish(msg)
            deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while time.monotonic() < deadline:  # its labels, or the node's word that it is done with it
                try:
                    if probe.results.get(timeout=0.1)[2] == stamp:
                        break
                except queue.Empty:
                    pass
                seq, statuses = probe.diagnostics(seq)
                books = _camera_books(statuses or {}, cameras)
                if books and _settled(books[index], sent) and books[index]["processed"] < sent:
                    break
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while time.monotonic() < deadline:
        seq, statuses = probe.diagnostics(seq, timeout=1.0)
        books = _camera_books(statuses or {}, cameras)
        if books and all(_settled(b, count) for b in books):
            break
    else:
        raise NodeStartError(f"seg_node did not settle its {count} warm-up frames within {WARMUP_TIMEOUT_S:.0f} s")
    while not probe.results.empty():
        probe.results.get_nowait()
    return seq, books


def live_node_params(cameras: list[LiveCamera], node_params: dict[str, Any]) -> dict[str, Any]:
    """The node's parameters for a live run: ``node_params``, the diagnostics period the books
    are read at, ``cameras`` with each camera's input topic (the bag's, made relative), and
    ``image_transport: compressed`` for compressed bags."""
    params = {**node_params, "diagnostics_period": DIAGNOSTICS_PERIOD_S}
    names = [c.name for c in cameras]
    if names != [None]:
        if "cameras" not in P.PARAMS_BY_NAME:
            raise ValueError("this seg_node serves one camera; evaluate each camera's topics on their own")
        params["cameras"] = names
        for camera in cameras:
            params[f"{camera.name}.image_topic"] = camera.bag.info.image_topic.lstrip("/").removesuffix("/compressed")
    compressed = {c.compressed for c in cameras}
    if len(compressed) > 1:
        raise ValueError("the cameras mix raw and compressed images; the node reads all cameras one way")
    if compressed == {True}:  # published as recorded; the node decodes, as it would on the car
        if "image_transport" not in P.PARAMS_BY_NAME:
            raise ValueError(f"{cameras[0].bag.info.image_topic} holds compressed images but this seg_node has "
                             f"no image_transport parameter; evaluate the bag with --mode offline")
        params["image_transport"] = "compressed"
    elif "image_transport" in P.PARAMS_BY_NAME:  # the replay publishes the bag's raw images, whatever the config says
        params["image_transport"] = "raw"
    return params


def run_live_cameras(cameras: list[LiveCamera], node_params: dict[str, Any], workdir: Path, speed: float = 1.0,
                     domain_id: int | None = None, progress: bool = True, threads: int | None = None,
                     seed: int | None = None, warmup_frames: int = WARMUP_FRAMES,
                     start_timeout: float = NODE_START_TIMEOUT_S) -> list[dict[str, Any]]:
    """Replay the cameras' bags through one ``seg_node`` process over DDS, all on the recorded
    schedule (merged by stamp); see the module docstring. Returns each camera's statistics.

    ``node_params`` are the node's parameters (written to ``<workdir>/node_params.yaml``, where
    the node also runs and logs to ``node.log``);
    ``threads`` sets the node's torch threads (``OMP_NUM_THREADS``); ``seed`` seeds torch in the
    node before it builds its model (for untrained models, so they match an offline run). Several
    cameras need a node with the ``cameras`` parameter; each camera's ``name`` is its name there.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = use_large_image_transport()  # before this process creates its first participant
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    streams = [camera.bag.frames() for camera in cameras]
    firsts = [next(frames, None) for frames in streams]
    for camera, first in zip(cameras, firsts, strict=True):
        if first is None:
            raise ValueError(f"bag {camera.bag.path} has no readable frames on {camera.bag.info.image_topic}")
    params = live_node_params(cameras, node_params)
    domain = pick_domain_id(domain_id)
    node = NodeProcess(params, workdir, domain, threads, seed)
    context = Context()
    context.init(args=[], domain_id=domain)
    probe = executor = spin_thread = None
    try:
        probe = Probe(context, cameras, params)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(probe.node)
        spin_thread = threading.Thread(target=executor.spin, name="seg_eval_executor", daemon=True)
        spin_thread.start()
        discovery_s = _wait_for_node(node, probe, start_timeout)
        seq, baselines = _warm_up(firsts, cameras, probe, warmup_frames)
        window = int(params.get("latency_window", P.defaults()["latency_window"]))
        replay = _Replay(cameras, probe, params, progress)
        stats = replay.run(firsts, streams, speed, seq, baselines, window)
        dds = {"domain_id": domain, "discovery_s": discovery_s,
               "discovery_range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE"),
               "rmw": rclpy.get_rmw_implementation_identifier(), "fastdds_profile": profile,
               "replay_qos": f"reliable, keep last {REPLAY_QOS_DEPTH}",
               "node_input_qos": f"{params.get('qos_reliability', 'best_effort')}, keep last "
                                 f"{params.get('qos_depth', 5)}"}
    finally:
        exit_code = node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=2.0)
        if probe is not None:
            probe.node.destroy_node()
        context.try_shutdown()
    process = {"command": node.command, "exit_code": exit_code, "stop_s": node.stop_s,
               "log": str(node.log_path), "params_file": str(node.params_file)}
    for camera, camera_stats in zip(cameras, stats, strict=True):
        camera_stats.update(dds=dds, warmup_frames=warmup_frames, node_process=process, camera=camera.name)
    return stats


def _image_message(frame: BagFrame, image_cls: type) -> Any:
    """An rclpy Image (or CompressedImage) with the bag message's data and fields, as recorded
    (stamp set at publish time)."""
    src = frame.image
    if is_compressed(src):
        msg = image_cls(format=str(src.format))
        msg.header.frame_id = frame.frame_id
        msg.data = np.asarray(src.data, dtype=np.uint8).tobytes()
        return msg
    msg = image_cls(height=int(src.height), width=int(src.width), encoding=str(src.encoding),
                    is_bigendian=int(src.is_bigendian), step=int(src.step))
    msg.header.frame_id = frame.frame_id
    msg.data = np.asarray(src.data, dtype=np.uint8).tobytes()
    return msg


@dataclass
class _CameraRun:
    """One camera's state during the replay."""

    camera: LiveCamera
    pending: dict[int, _Pending] = field(default_factory=dict)  # publish stamp -> frame
    e2e: list[float] = field(default_factory=list)
    published: int = 0
    unexpected: int = 0
    first_result_s: float | None = None
    last_result_s: float | None = None

    def returned(self) -> int:
        counts = self.camera.ledger.counts()
        return counts["evaluated"] + counts["not_evaluated"]


class _Replay:
    """Publish every camera's frames on the recorded schedule, match outputs as they come, then
    wait for stragglers and reconcile each camera with its books in the node's diagnostics."""

    def __init__(self, cameras: list[LiveCamera], probe: Probe, params: dict[str, Any], progress: bool) -> None:
        self.runs = [_CameraRun(camera) for camera in cameras]
        self.probe = probe
        self.max_pixels = int(params.get("max_pixels", P.defaults()["max_pixels"]))
        self.multi = cameras[0].name is not None
        self.total = sum(camera.bag.info.image_count for camera in cameras)
        self.progress = progress
        self.start = 0.0
        self.bar: Any = None

    def drain(self, timeout: float = 0.0) -> None:
        while True:
            try:
                index, received_ns, stamp_ns, labels = self.probe.results.get(timeout=timeout)
            except queue.Empty:
                return
            timeout = 0.0
            run = self.runs[index]
            entry = run.pending.pop(stamp_ns, None)
            if entry is None:
                run.unexpected += 1
                continue
            # The node answers a camera's frames in order: older ones still pending never come back.
            for older in [s for s in run.pending if s < stamp_ns]:
                self._give_up(run, run.pending.pop(older))
            latency = (received_ns - stamp_ns) / 1e6
            run.e2e.append(latency)
            now_s = time.monotonic() - self.start
            run.first_result_s = now_s if run.first_result_s is None else run.first_result_s
            run.last_result_s = now_s
            run.camera.ledger.result(entry.frame, labels, latency, entry.sent_s)
            self._postfix()

    def _postfix(self) -> None:
        counts: dict[str, int] = {}
        for run in self.runs:
            for key, n in run.camera.ledger.counts().items():
                counts[key] = counts.get(key, 0) + n
        self.bar.set_postfix(counts, refresh=False)

    def _give_up(self, run: _CameraRun, entry: _Pending) -> None:
        """A frame that never came back: rejected if the node's own admission checks refuse it
        (the same functions, so the same reason), else dropped; the node's books say why."""
        try:
            admission_check(entry.frame.image, self.max_pixels)
        except ImageRejected as exc:
            run.camera.ledger.missing(entry.frame, "rejected", exc.reason, entry.sent_s)
            return
        run.camera.ledger.missing(entry.frame, "dropped", None, entry.sent_s)

    def run(self, firsts: list[BagFrame], streams: list[Any], speed: float, seq: int,
            baselines: list[dict[str, Any]], latency_window: int) -> list[dict[str, Any]]:
        label = "eval live" + (f" {len(self.runs)} cameras" if self.multi else "")
        self.bar = _progress(self.total, f"{label} x{speed:g}", self.progress)
        origin = min(first.stamp_ns for first in firsts)

        def tagged(index: int, first: BagFrame, rest: Any) -> Any:
            yield first.stamp_ns, index, first
            for frame in rest:
                yield frame.stamp_ns, index, frame

        merged = heapq.merge(*(tagged(i, f, s) for i, (f, s) in enumerate(zip(firsts, streams, strict=True))),
                             key=lambda item: (item[0], item[1]))
        last_stamp = 0
        self.start = time.monotonic()
        for stamp_ns, index, frame in merged:
            run = self.runs[index]
            msg = _image_message(frame, self.probe.image_types[index])
            due = self.start + (stamp_ns - origin) / 1e9 / speed
            while (wait := due - time.monotonic()) > 0:  # match outputs while waiting for this frame's time
                self.drain(timeout=min(wait, 0.05))
            stamp = max(self.probe.now_ns(), last_stamp + 1)  # unique stamps, so matching is unambiguous
            last_stamp = stamp
            stamp_message(msg, stamp)
            run.pending[stamp] = _Pending(frame, time.monotonic() - self.start)
            self.probe.publishers[index].publish(msg)
            run.published += 1
            self.bar.update(1)
            self.drain()
        replay_s = time.monotonic() - self.start
        books, final = self._stragglers(seq, baselines)
        for run in self.runs:
            self.drain()
            for stamp in sorted(run.pending):
                self._give_up(run, run.pending.pop(stamp))
        self._postfix()
        self.bar.close()
        engine_status = _engine_status(final, self.multi)
        stages = (engine_status or {}).get("stages", {})
        processed_total = sum(int(b["processed"]) for b in baselines) + sum(b["processed"] for b in books)
        window = min(latency_window, processed_total)
        out = []
        for run, camera_books in zip(self.runs, books, strict=True):
            status = (final or {}).get(run.camera.status_name()) or {}
            out.append(self._camera_stats(run, camera_books, replay_s, speed))
            out[-1].update(
                stages_ms={s: _node_window(stages.get(s), window) for s in STAGES},
                node_end_to_end_ms=_node_window(status.get("stages", {}).get("end_to_end"),
                                                min(latency_window, camera_books["processed"])),
                engine=report_engine(engine_status))
        return out

    def _stragglers(self, seq: int, baselines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
        """Wait until the node's books say it received and settled every frame and we hold all its
        outputs, or until nothing has moved for a while (frames lost before the node)."""
        books, final = [books_delta(b, b) for b in baselines], None
        deadline = time.monotonic() + STRAGGLER_TIMEOUT_S
        last_progress, last_key = time.monotonic(), None
        while time.monotonic() < deadline:
            self.drain(timeout=0.05)
            seq, statuses = self.probe.diagnostics(seq)
            current = _camera_books(statuses or {}, [run.camera for run in self.runs])
            if current is None:
                continue
            books = [books_delta(c, b) for c, b in zip(current, baselines, strict=True)]
            final = statuses
            pairs = list(zip(books, self.runs, strict=True))
            settled = all(_settled(b, 0) and run.returned() >= b["processed"] - self.probe.collector_lost
                          for b, run in pairs)
            if settled and all(b["received"] >= run.published for b, run in pairs):
                break
            key = tuple((b["received"], b["processed"], run.returned()) for b, run in pairs)
            if key != last_key:
                last_key, last_progress = key, time.monotonic()
            elif settled and time.monotonic() - last_progress > STRAGGLER_IDLE_S:
                break
        return books, final

    @staticmethod
    def _camera_stats(run: _CameraRun, books: dict[str, Any], replay_s: float, speed: float) -> dict[str, Any]:
        returned, published = run.returned(), run.published
        transport_lost = max(0, published - books["received"])
        output_lost = max(0, books["processed"] - returned)
        not_returned = published - returned
        explained = books["dropped_total"] + books["rejected_total"] + transport_lost + output_lost
        output_span = (run.last_result_s - run.first_result_s) if returned > 1 else 0.0
        return {
            "published": published,
            "results_received": returned,
            "unexpected_outputs": run.unexpected,
            "node_accounting": books,
            "transport_lost": transport_lost,
            "output_lost": output_lost,
            "reconciliation": {
                "not_returned": not_returned,
                "explained_by_node_and_transport": explained,
                "node_processed_equals_returned": books["processed"] == returned,
                "all_accounted": not_returned == explained and books["in_flight"] == 0,
            },
            "frame_latency_ms": percentiles(run.e2e),
            "frame_latency_kind": "end-to-end: header stamp (set at publish) -> labels received",
            "throughput_fps": (returned - 1) / output_span if output_span > 0 else 0.0,
            "input_fps": (published - 1) / replay_s if replay_s > 0 and published > 1 else 0.0,
            "speed": speed,
            "replay_s": replay_s,
            "first_result_s": run.first_result_s,
        }


def report_engine(status: dict[str, Any] | None) -> dict[str, Any]:
    """The engine description the node published, with every field the report prints."""
    engine = dict((status or {}).get("engine") or {})
    engine.setdefault("parameters", 0)
    for key in ("model", "variant", "device", "precision", "weights"):
        engine.setdefault(key, "?")
    return engine


def _node_window(summary: dict[str, float] | None, count: int) -> dict[str, float] | None:
    """Percentiles from the node's diagnostics over the ``count`` frames of its latency window
    (warm-up frames included until the replay's frames push them out)."""
    return None if not summary or not count else {**summary, "count": count}


