"""Harness for the reliability tests and the ``bench/overload.py`` / ``bench/soak.py`` runs.

A :class:`NodeHarness` runs a real :class:`SegmentationNode` and a driver node (camera publisher,
labels and diagnostics subscribers) in one private rclpy context, each on its own executor
thread, so frames go through DDS exactly as from a camera driver. :class:`FakeEngine` stands in
for the model when a test is about the node's plumbing rather than the network: its labels are
the frame's red channel, so a label image proves which frame it came from.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from seg_perception.cityscapes import CLASS_NAMES, PALETTE
from seg_perception.engine_api import BatchShape, EngineConfig, OutputRequest, SegmentationResult
from seg_perception.node import SegmentationNode

#: Node parameters for CPU tests: fp32 on the CPU, no frame-age limit (tests control stamps).
CPU_PARAMS: dict[str, Any] = {"device": "cpu", "precision": "fp32", "max_age_ms": 0.0}


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process, from /proc (no psutil needed)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found")


def image_msg(rgb: np.ndarray, frame_id: str = "camera", stamp_ns: int | None = None) -> Image:
    """An rgb8 Image of ``rgb`` stamped ``stamp_ns`` (default: now, wall clock like the node)."""
    stamp_ns = time.time_ns() if stamp_ns is None else stamp_ns
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                step=rgb.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.data = rgb.tobytes()
    return msg


def stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class _Pending:
    def __init__(self, result: SegmentationResult) -> None:
        self._result = result

    def result(self) -> SegmentationResult:
        return self._result


class FakeEngine:
    """Engine stand-in: labels = red channel + ``label_offset`` (mod 256), after ``delay_s`` of
    (GIL-free) sleep. The offset tells which engine produced a label image.

    It implements every member of :class:`seg_perception.engine_api.Engine` (the scheduler refuses
    an incomplete engine) and records the calls a test may check: ``warmed_up``, ``prepared``,
    ``closed``."""

    asynchronous = False
    device = torch.device("cpu")
    #: Cityscapes' labels, as a real engine without a label-carrying checkpoint has.
    class_names = tuple(CLASS_NAMES)
    palette = PALETTE

    def __init__(self, config: EngineConfig | None = None, delay_s: float = 0.0, label_offset: int = 0) -> None:
        self.config = config or EngineConfig(device="cpu", precision="fp32")
        self.delay_s, self.label_offset = delay_s, label_offset
        self.calls = 0
        self.warmed_up: list[tuple[int, int]] = []
        self.prepared: list[tuple[tuple[int, int], ...]] = []
        self.closed = False
        self._recent: list[BatchShape] = []

    @property
    def description(self) -> dict[str, Any]:
        return {"model": "fake", "variant": self.config.model, "device": "cpu", "precision": "fp32",
                "parameters": 0, "weights": self.config.weights or "(random init)", "crf": "none"}

    def memory_allocated_mb(self) -> None:
        return None

    def submit(self, frame: np.ndarray, outputs: OutputRequest | None = None) -> _Pending:
        started = time.perf_counter()
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        labels = frame[:, :, 0] + np.uint8(self.label_offset)
        ms = (time.perf_counter() - started) * 1e3
        return _Pending(SegmentationResult(labels=labels, timings_ms={"inference": ms}))

    def submit_batch(self, frames: list[np.ndarray], outputs: list[OutputRequest]) -> list[_Pending]:
        self._recent = [(tuple(f.shape[:2] for f in frames), tuple(outputs))][-1:]
        return [self.submit(frame, out) for frame, out in zip(frames, outputs, strict=True)]

    def warmup(self, height: int, width: int) -> None:
        self.warmed_up.append((height, width))

    def prepare(self, sizes: list[tuple[int, int]], outputs: list[OutputRequest]) -> None:
        assert len(sizes) == len(outputs)
        self.prepared.append(tuple(sizes))

    def recent_batches(self) -> list[BatchShape]:
        return list(self._recent)

    def recover_from_failure(self, exc: BaseException) -> str:
        return "inference_error"

    def close(self) -> None:
        self.closed = True


@dataclass
class Received:
    """A label image as the driver saw it."""

    arrival_ns: int
    stamp_ns: int
    frame_id: str
    labels: np.ndarray


@dataclass
class Diagnostic:
    arrival: float
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


class NodeHarness:
    """A seg_node plus a driver in a private context; use as a context manager."""

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        engine_factory: Callable[[EngineConfig], Any] | None = None,
        input_depth: int = 1000,
        keep_labels: bool = True,
        history: int | None = None,
        label_sample: int = 1,
        input_type: type = Image,
        input_topic: str = "camera/image_raw",
    ) -> None:
        self.context = rclpy.Context()
        self.context.init()
        merged = {**CPU_PARAMS, "qos_reliability": "reliable", "qos_depth": input_depth,
                  "diagnostics_period": 0.2, **(params or {})}
        self.node = SegmentationNode(
            parameter_overrides=[Parameter(k, value=v) for k, v in merged.items()],
            context=self.context, engine_factory=engine_factory,
        )
        self.driver = Node("seg_reliability_driver", context=self.context)
        qos = QoSProfile(depth=input_depth, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
        self.publisher = self.driver.create_publisher(input_type, input_topic, qos)
        # Label pixels are kept for every ``label_sample``-th label only (headers for all), so
        # that a long run's memory figure is the node's, not the driver's collection of images.
        self.keep_labels, self.label_sample = keep_labels, label_sample
        # ``history`` bounds what the driver keeps, so a soak measures the node, not the driver.
        self.labels: deque[Received] = deque(maxlen=history)
        self.diagnostics: deque[Diagnostic] = deque(maxlen=history)
        self.label_count = 0
        self._lock = threading.Lock()
        self.driver.create_subscription(Image, "segmentation/labels", self._on_labels, qos)
        self.driver.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 100)
        self._executors = []
        self._threads = []
        for node in (self.node, self.driver):
            executor = SingleThreadedExecutor(context=self.context)
            executor.add_node(node)
            thread = threading.Thread(target=executor.spin, daemon=True)
            thread.start()
            self._executors.append(executor)
            self._threads.append(thread)
        self.wait_for(lambda: self.publisher.get_subscription_count() > 0
                      and self.node.labels_pub.get_subscription_count() > 0, 10.0, "DDS discovery")

    def _on_labels(self, msg: Image) -> None:
        keep = self.keep_labels and self.label_count % self.label_sample == 0
        labels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width) if keep \
            else np.empty((0, 0), np.uint8)
        item = Received(time.time_ns(), stamp_ns(msg.header), msg.header.frame_id, labels)
        with self._lock:
            self.labels.append(item)
            self.label_count += 1

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("seg_perception"):
                values = {kv.key: kv.value for kv in status.values}
                with self._lock:
                    self.diagnostics.append(Diagnostic(time.monotonic(), status.level[0], status.message, values))

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.005)

    def wait_labels(self, frame_id: str, timeout: float = 20.0) -> Received:
        """Wait for the label image of ``frame_id`` and return it."""
        self.wait_for(lambda: any(r.frame_id == frame_id for r in list(self.labels)), timeout, frame_id)
        return next(r for r in list(self.labels) if r.frame_id == frame_id)

    def wait_received(self, count: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.node.scheduler.accounting.received >= count, timeout, f"{count} frames received")

    def wait_settled(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until no frame is in flight in the node; return the books."""
        self.wait_for(lambda: self.node.scheduler.accounting.snapshot()["in_flight"] == 0, timeout, "in-flight frames")
        return self.node.scheduler.accounting.snapshot()

    def next_diagnostic(self, timeout: float = 5.0) -> Diagnostic:
        """The first diagnostic published after now."""
        start = time.monotonic()
        self.wait_for(lambda: any(d.arrival > start for d in list(self.diagnostics)), timeout, "diagnostics")
        with self._lock:
            return next(d for d in list(self.diagnostics) if d.arrival > start)

    def wait_level(self, level: int, timeout: float = 10.0) -> Diagnostic:
        """Wait until a diagnostic at ``level`` arrives (after now) and return it."""
        deadline = time.monotonic() + timeout
        diagnostic = None
        while True:
            try:
                diagnostic = self.next_diagnostic(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"no level {level} diagnostic; last: {diagnostic}") from None
            if diagnostic.level == level:
                return diagnostic
            if time.monotonic() > deadline:
                raise TimeoutError(f"no level {level} diagnostic; last: {diagnostic}")

    def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(timeout_sec=2.0)
        for thread in self._threads:
            thread.join(2.0)
        self.node.destroy_node()
        self.driver.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> NodeHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- generated image messages (hypothesis) ------------------------------------------------------
#: The encodings the node must accept, restated here (channels, bytes per channel) so the tests
#: do not trust the table they check.
LAYOUTS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1),
    "rgb16": (3, 2), "bgr16": (3, 2), "rgba16": (4, 2), "bgra16": (4, 2), "mono16": (1, 2),
}
#: Real-world encodings we do not convert, plus near-misses of supported names.
UNSUPPORTED = ("", "RGB8", "rgb8 ", "rgb", "yuv422", "bayer_rggb8", "bayer_bggr16", "16UC1", "32FC1",
               "8UC3", "8UC1", "mono12", "jpeg", "nv21")
HUGE = (2**12, 2**16, 2**31 - 1, 2**32 - 1)  # uint32 fields: anything up to 2**32 - 1 arrives
MUTATIONS = ("encoding", "bigendian", "zero_height", "zero_width", "huge_height", "huge_width",
             "step_short", "step_random", "truncate", "oversize", "length_random")


@dataclass
class Fields:
    """The fields of one sensor_msgs/Image, as generated."""

    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int
    data: bytes

    def to_msg(self, frame_id: str = "fuzz") -> Image:
        msg = Image(encoding=self.encoding, height=self.height, width=self.width, step=self.step,
                    is_bigendian=self.is_bigendian, data=self.data)
        msg.header.frame_id = frame_id
        return msg


def image_fields() -> Any:
    """Strategy: a valid image message (any supported encoding, padded rows, either byte order)
    with up to two corruptions applied, so every reason and valid frames all come up often."""
    from hypothesis import strategies as st

    text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)

    @st.composite
    def build(draw: Any) -> Fields:
        encoding = draw(st.sampled_from(sorted(LAYOUTS)))
        height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        is_bigendian = draw(st.sampled_from((0, 1)))
        channels, depth = LAYOUTS[encoding]
        step = width * channels * depth + draw(st.integers(0, 4))
        length = step * height
        for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2, unique=True)):
            if mutation == "encoding":
                encoding = draw(st.one_of(st.sampled_from(UNSUPPORTED), text))
            elif mutation == "bigendian":
                is_bigendian = draw(st.integers(2, 255))
            elif mutation == "zero_height":
                height = 0
            elif mutation == "zero_width":
                width = 0
            elif mutation == "huge_height":
                height = draw(st.sampled_from(HUGE))
            elif mutation == "huge_width":
                width = draw(st.sampled_from(HUGE))
            elif mutation == "step_short":
                step = draw(st.integers(0, max(0, step - 1)))
            elif mutation == "step_random":
                step = draw(st.integers(0, 2**32 - 1))
            elif mutation == "truncate":
                length = draw(st.integers(0, max(0, length - 1)))
            elif mutation == "oversize":
                length += draw(st.integers(1, 64))
            else:
                length = draw(st.integers(0, 2048))
        data = draw(st.binary(min_size=length, max_size=length)) if length <= 64 else \
            bytes([draw(st.integers(0, 255))]) * length
        return Fields(encoding, height, width, step, is_bigendian, data)

    return build()


def expected_reason(f: Fields, max_pixels: int) -> str | None:
    """The rejection reason the documented check order gives, or None for a valid frame."""
    if f.encoding not in LAYOUTS:
        return "encoding"
    if f.is_bigendian not in (0, 1):
        return "is_bigendian"
    if f.height == 0 or f.width == 0:
        return "zero_size"
    if f.height * f.width > max_pixels:
        return "too_large"
    channels, depth = LAYOUTS[f.encoding]
    if f.step < f.width * channels * depth:
        return "step"
    if len(f.data) != f.step * f.height:
        return "data_length"
    return None


def decode_pixel(f: Fields, row: int, col: int) -> tuple[int, int, int]:
    """One pixel as 8-bit RGB, decoded byte by byte (the slow, obvious way)."""
    channels, depth = LAYOUTS[f.encoding]
    offset = row * f.step + col * channels * depth
    samples = [
        int.from_bytes(f.data[offset + c * depth: offset + (c + 1) * depth],
                       "big" if f.is_bigendian else "little") >> (8 * (depth - 1))
        for c in range(channels)
    ]
    if f.encoding.startswith("mono"):
        return samples[0], samples[0], samples[0]
    if f.encoding.startswith("bgr"):
        return samples[2], samples[1], samples[0]
    return samples[0], samples[1], samples[2]


# -- long runs: overload and soak (shared by the tests and bench/) --------------------------------
def frame_for(index: int, shape: tuple[int, int]) -> np.ndarray:
    """A distinct, reproducible noise frame per index (so labels identify their frame)."""
    return np.random.default_rng(index).integers(0, 256, (*shape, 3), dtype=np.uint8)


def node_capacity(harness: NodeHarness, shape: tuple[int, int], frames: int = 30) -> float:
    """Frames per second the node's worker sustains on ``shape`` frames: publish ``frames`` at a
    gentle 10 Hz (which also warms the path up) and invert the worker's median time per frame.
    (Flooding the node instead would measure the publisher stealing the CPU as well.)"""
    publish_paced(harness, "cal", range(frames), shape, 10.0)
    harness.wait_received(frames)
    harness.wait_settled()
    per_frame_ms = sum(w.summary()["p50"] for w in harness.node.scheduler.stage_latency.values())
    return 1000.0 / per_frame_ms


def publish_paced(harness: NodeHarness, prefix: str, indices: range, shape: tuple[int, int],
                  rate_hz: float, stamps: dict[str, int] | None = None,
                  between: Callable[[int], None] | None = None) -> float:
    """Publish frames ``prefix{i}`` at ``rate_hz`` (stamped at publish time); returns seconds."""
    period = 1.0 / rate_hz
    started = next_time = time.perf_counter()
    for n, i in enumerate(indices):
        now = time.perf_counter()
        if next_time > now:
            time.sleep(next_time - now)
        elif now - next_time > period:
            next_time = now  # fell behind (a GC pause, a busy CPU): no burst to catch up
        next_time += period
        msg = image_msg(frame_for(i, shape), frame_id=f"{prefix}{i}")
        if stamps is not None:
            stamps[msg.header.frame_id] = stamp_ns(msg.header)
        harness.publisher.publish(msg)
        if between is not None:
            between(n)
    return time.perf_counter() - started


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def run_overload(harness: NodeHarness, frames: int, shape: tuple[int, int], factor: float = 3.0,
                 recovery_max_s: float = 15.0) -> dict[str, Any]:
    """Publish ``frames`` frames at ``factor`` x the node's measured capacity, then keep
    publishing at a third of it until diagnostics report OK while frames still flow.

    Returns the figures the overload guarantees are about; the caller asserts on them.
    """
    capacity = node_capacity(harness, shape)
    harness.labels.clear()
    received_before = harness.node.scheduler.accounting.received
    books_before = harness.node.scheduler.accounting.snapshot()
    rate = factor * capacity
    # The overload must outlast a few diagnostics periods to be seen there, however fast the node is.
    frames = max(frames, int(rate * 4 * harness.node.values["diagnostics_period"]) + 1)
    stamps: dict[str, int] = {}
    rss_start = rss_mb()
    overload_start = time.monotonic()
    rss_series: list[tuple[int, float]] = []

    def sample_rss(n: int) -> None:
        if (n + 1) % max(1, frames // 10) == 0:
            rss_series.append((n + 1, rss_mb()))

    overload_s = publish_paced(harness, "o", range(frames), shape, rate, stamps, between=sample_rss)
    overload_end = time.monotonic()
    rss_after_overload = rss_mb()

    recovered: list[Diagnostic] = []

    def healthy() -> bool:
        fresh = [d for d in list(harness.diagnostics) if d.arrival > overload_end + 0.5]
        recovered.extend(d for d in fresh[-1:] if d.level == 0 and "drop_ratio" in d.values)
        return bool(recovered)

    recovery_rate = capacity / 3
    index = frames
    while not healthy() and time.monotonic() - overload_end < recovery_max_s:
        chunk = max(1, int(recovery_rate))  # about one second per chunk
        publish_paced(harness, "r", range(index, index + chunk), shape, recovery_rate, stamps)
        index += chunk
    recovery_s = time.monotonic() - overload_end
    harness.wait_received(received_before + len(stamps), timeout=60.0)
    books = harness.wait_settled(timeout=60.0)
    time.sleep(0.3)  # the last labels in flight on DDS

    labels = [r for r in list(harness.labels) if r.frame_id in stamps]
    overload_labels = [r for r in labels if r.frame_id.startswith("o")]
    latencies = [(r.arrival_ns - r.stamp_ns) / 1e6 for r in overload_labels]
    fifth = max(1, len(latencies) // 5)
    indices = [int(r.frame_id[1:]) for r in labels]
    period = harness.node.values["diagnostics_period"]
    during = [d for d in list(harness.diagnostics) if overload_start + 2 * period < d.arrival <= overload_end]
    delta = {
        "received": books["received"] - books_before["received"],
        "processed": books["processed"] - books_before["processed"],
        "dropped": {k: v - books_before["dropped"].get(k, 0) for k, v in books["dropped"].items()
                    if v - books_before["dropped"].get(k, 0)},
        "rejected": {k: v - books_before["rejected"].get(k, 0) for k, v in books["rejected"].items()
                     if v - books_before["rejected"].get(k, 0)},
    }
    inference = harness.node.scheduler.stage_latency["inference"].summary()
    return {
        "frame_shape": list(shape),
        "capacity_fps": capacity,
        "publish_rate_hz": rate,
        "achieved_publish_rate_hz": frames / overload_s,
        "frames_sent": len(stamps),
        "overload_frames_sent": frames,
        "books": books,
        "run": delta,
        # the node's books against what this probe counted itself: frames it sent, labels it got
        "books_match_probe": delta["received"] == len(stamps) and delta["processed"] == len(labels)
        and sum(delta["dropped"].values()) + sum(delta["rejected"].values()) == len(stamps) - len(labels),
        "processed_during_overload": len(overload_labels),
        "inference_ms_p50": inference["p50"],
        "latency_ms_p50": float(np.median(latencies)) if latencies else float("nan"),
        "latency_ms_p99_start": _p99(latencies[:fifth]),
        "latency_ms_p99_end": _p99(latencies[-fifth:]),
        "rss_mb_start": rss_start,
        "rss_mb_after_overload": rss_after_overload,
        "rss_mb_end": rss_mb(),
        "rss_mb_series": rss_series,
        "levels_during_overload": [d.level for d in during],
        "messages_during_overload": sorted({d.message for d in during}),
        "recovered_to_ok": bool(recovered),
        "seconds_to_ok": recovery_s,
        "labels_received": len(labels),
        "headers_match": all(stamps[r.frame_id] == r.stamp_ns for r in labels),
        "in_order_no_duplicates": indices == sorted(set(indices)),
        "labels": labels,
    }


def run_soak(harness: NodeHarness, frames: int, shape: tuple[int, int], rate_hz: float,
             checkpoints: int = 10, trace: bool = True) -> dict[str, Any]:
    """Publish ``frames`` frames at a sustainable ``rate_hz``; sample memory, objects and threads.

    The first checkpoint comes after 10% of the frames (warm-up: allocator pools, caches), and
    growth is measured from there.
    """
    import gc
    import tracemalloc

    samples: list[dict[str, float]] = []
    every = max(1, frames // checkpoints)

    def sample(n: int) -> None:
        if (n + 1) % every and n + 1 != frames:
            return
        gc.collect()
        entry = {
            "frames": n + 1,
            "rss_mb": rss_mb(),
            "gc_objects": len(gc.get_objects()),
            "python_threads": threading.active_count(),
            "native_threads": len(os.listdir("/proc/self/task")),
            "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else float("nan"),
            "gpu_mb": harness.node.scheduler.engine.memory_allocated_mb() or float("nan"),
        }
        samples.append(entry)
        if trace and len(samples) == 1:
            tracemalloc.start()

    started = time.monotonic()
    publish_paced(harness, "s", range(frames), shape, rate_hz, between=sample)
    harness.wait_received(frames, timeout=60.0)
    books = harness.wait_settled(timeout=60.0)
    duration = time.monotonic() - started
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    # With tracemalloc on, its own bookkeeping lives in the RSS: measure from its first sample.
    base, last = (samples[1] if trace and len(samples) > 2 else samples[0]), samples[-1]
    return {
        "frame_shape": list(shape),
        "rate_hz": rate_hz,
        "frames": frames,
        "duration_s": duration,
        "books": books,
        "samples": samples,
        "rss_growth_mb": last["rss_mb"] - base["rss_mb"],
        "gc_objects_growth": last["gc_objects"] - base["gc_objects"],
        "traced_growth_mb": last["traced_mb"] - samples[1]["traced_mb"] if len(samples) > 2 else float("nan"),
        "python_threads_growth": last["python_threads"] - base["python_threads"],
        "native_threads_growth": last["native_threads"] - base["native_threads"],
        "gpu_growth_mb": last["gpu_mb"] - base["gpu_mb"],
    }
