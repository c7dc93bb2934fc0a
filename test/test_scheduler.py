"""The ROS-free scheduler with fake engines: batching, fairness, accounting, reloads, silence,
isolation of bad input. No DDS, no model: each test runs in well under a second of CPU."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest

from seg_perception.diagnostics import OK, WARN, Thresholds, camera_report
from seg_perception.engine_api import BatchShape, OutputRequest, SegmentationResult
from seg_perception.image_conversion import ImageRejected
from seg_perception.scheduler import CameraPolicy, Frame, FrameSlots, Scheduler

CAMERAS = ("front", "left", "right")


class _Done:
    def __init__(self, result: SegmentationResult | Exception) -> None:
        self._result = result

    def result(self) -> SegmentationResult:
        if isinstance(self._result, Exception):
            raise self._result
        return self._result


class BatchEngine:
    """Labels = the frame's red channel + ``offset``. Records every batch's red values; a frame
    whose red value is ``poison`` makes the whole batch raise (as a real batched model would).
    ``gate`` (when set) holds each batch until released, to let frames pile up."""

    asynchronous = False
    device = SimpleNamespace(type="cpu")
    class_names = ("a", "b")
    palette = np.zeros((2, 3), np.uint8)

    def __init__(self, offset: int = 0, poison: int | None = None, delay_s: float = 0.0) -> None:
        self.offset, self.poison, self.delay_s = offset, poison, delay_s
        self.batches: list[list[int]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.description = {"model": "fake", "device": "cpu"}

    def memory_allocated_mb(self) -> None:
        return None

    def warmup(self, height: int, width: int) -> None:
        pass

    def prepare(self, sizes: Sequence[tuple[int, int]], outputs: Sequence[OutputRequest]) -> None:
        pass

    def recent_batches(self) -> list[BatchShape]:
        return []

    def recover_from_failure(self, exc: BaseException) -> str:
        return "out_of_memory" if isinstance(exc, MemoryError) else "inference_error"

    def close(self) -> None:
        pass

    def submit_batch(self, frames: Sequence[np.ndarray], outputs: Sequence[OutputRequest]) -> list[_Done]:
        assert len(frames) == len(outputs)
        reds = [int(f[0, 0, 0]) for f in frames]
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10.0)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison in reds:
            raise RuntimeError(f"poisoned batch {reds}")
        self.batches.append(reds)
        return [_Done(SegmentationResult(labels=f[:, :, 0] + np.uint8(self.offset), batch_size=len(frames),
                                         timings_ms={"decode": 0.1, "inference": 1.0})) for f in frames]


def _rgb(red: int) -> np.ndarray:
    return np.full((4, 6, 3), red, np.uint8)


class Rig:
    """A scheduler whose payloads are RGB arrays (or a string, which fails conversion)."""

    def __init__(self, engine: BatchEngine, cameras: Sequence[str] = CAMERAS, **kwargs) -> None:
        self.published: list[tuple[str, int, int]] = []  # camera, input red, label value
        self.lock = threading.Lock()
        self.policies: dict[str, CameraPolicy] = {}
        self.scheduler = Scheduler(cameras, convert=self._convert, publish=self._publish,
                                   policy=lambda c: self.policies.get(c, CameraPolicy()), **kwargs)
        self.scheduler.install(engine)
        self.scheduler.start()

    @staticmethod
    def _convert(frame: Frame) -> np.ndarray:
        if isinstance(frame.payload, str):
            if frame.payload == "bad_encoding":
                raise ImageRejected("encoding", "unsupported encoding")
            raise ValueError("cannot decode")
        return frame.payload

    def _publish(self, frame: Frame, result: SegmentationResult) -> None:
        with self.lock:
            self.published.append((frame.camera, int(frame.payload[0, 0, 0]), int(result.labels[0, 0])))

    def put(self, camera: str, payload: object) -> None:
        self.scheduler.put(camera, payload, stamp_ns=time.time_ns())

    def settle(self, expected_received: int, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            books = self.scheduler.accounting.snapshot()
            if books["received"] >= expected_received and books["in_flight"] == 0:
                return books
            time.sleep(0.005)
        raise TimeoutError(self.scheduler.accounting.snapshot())

    def close(self) -> None:
        assert self.scheduler.stop(5.0)


@pytest.fixture
def rigs():
    made: list[Rig] = []

    def make(engine: BatchEngine, **kwargs) -> Rig:
        made.append(Rig(engine, **kwargs))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def _hold_worker(rig: Rig, engine: BatchEngine, red: int) -> threading.Event:
    """Occupy the worker with one frame of ``front`` until the returned event is set."""
    engine.gate, engine.entered = threading.Event(), threading.Event()
    rig.put("front", _rgb(red))
    assert engine.entered.wait(5.0)
    return engine.gate


def _assert_books_add_up(scheduler: Scheduler) -> None:
    total, cameras = scheduler.accounting.snapshots()
    assert total["received"] == total["processed"] + total["dropped_total"] + total["rejected_total"] \
        + total["in_flight"]
    for key in ("received", "processed", "dropped_total", "rejected_total", "in_flight"):
        assert total[key] == sum(c[key] for c in cameras.values()), key
    for kind in ("dropped", "rejected"):
        summed = Counter()
        for books in cameras.values():
            summed.update(books[kind])
        assert dict(summed) == total[kind], kind


def test_newest_frame_of_every_camera_runs_as_one_batch(rigs) -> None:
    engine = BatchEngine()
    rig = rigs(engine, batch_wait_ms=0.0)
    gate = _hold_worker(rig, engine, 1)
    for red, camera in ((10, "front"), (20, "left"), (11, "front"), (30, "right"), (12, "front")):
        rig.put(camera, _rgb(red))
    gate.set()
    books = rig.settle(6)
    assert [sorted(batch) for batch in engine.batches] == [[1], [12, 20, 30]]
    assert books["processed"] == 4 and books["dropped"] == {"superseded": 2}
    assert rig.scheduler.accounting.snapshot("front")["dropped"] == {"superseded": 2}
    assert {(c, red) for c, red, _ in rig.published} == {("front", 1), ("front", 12), ("left", 20), ("right", 30)}
    assert all(red == label for _, red, label in rig.published)  # each result went to its own frame
    assert rig.scheduler.batch_sizes.summary()["max"] == 3
    _assert_books_add_up(rig.scheduler)


def test_batch_wait_collects_a_late_camera_and_zero_wait_does_not(rigs) -> None:
    waiting = rigs(BatchEngine(), cameras=("a", "b"), batch_wait_ms=2000.0)
    waiting.put("a", _rgb(1))
    time.sleep(0.05)
    waiting.put("b", _rgb(2))
    waiting.settle(2)
    assert waiting.scheduler.engine.batches == [[1, 2]]

    engine = BatchEngine()
    eager = rigs(engine, cameras=("a", "b"), batch_wait_ms=0.0)
    eager.put("a", _rgb(1))
    eager.settle(1)
    eager.put("b", _rgb(2))
    eager.settle(2)
    assert engine.batches == [[1], [2]]


def test_stage_windows_follow_the_keys_the_engine_reports(rigs) -> None:
    rig = rigs(BatchEngine())
    assert rig.scheduler.stage_latency == {}
    rig.put("left", _rgb(3))
    rig.settle(1)
    # "inference" is the fake engine's only stage; "decode" is the scheduler's own and "queue" is
    # the result's queue_ms (time waiting for the previous batch), kept apart from the stages.
    assert set(rig.scheduler.stage_latency) == {"decode", "queue", "inference"}
    assert rig.scheduler.stage_latency["inference"].summary()["count"] == 1
    assert rig.scheduler.camera_stats["left"].end_to_end.summary()["count"] == 1
    assert rig.scheduler.camera_stats["front"].end_to_end.summary()["count"] == 0


def test_round_robin_without_batching_serves_every_camera_fairly(rigs) -> None:
    """max_batch_size 1 and every camera always pending: each gets the same share."""
    engine = BatchEngine(delay_s=0.002)
    rig = rigs(engine, max_batch_size=1, batch_wait_ms=0.0)
    stop = threading.Event()

    def flood(camera: str, red: int) -> None:
        while not stop.is_set():
            rig.put(camera, _rgb(red))
            time.sleep(0.0005)

    threads = [threading.Thread(target=flood, args=(c, 10 * (i + 1))) for i, c in enumerate(CAMERAS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    books = rig.settle(0)
    assert all(len(batch) == 1 for batch in engine.batches)
    shares = Counter(camera for camera, _, _ in rig.published)
    mean = books["processed"] / len(CAMERAS)
    assert books["processed"] >= 30
    assert all(abs(shares[c] - mean) <= 0.2 * mean for c in CAMERAS), shares
    _assert_books_add_up(rig.scheduler)


def test_a_flooded_camera_does_not_starve_a_slow_one(rigs) -> None:
    engine = BatchEngine(delay_s=0.005)
    rig = rigs(engine, max_batch_size=1, batch_wait_ms=0.0)
    for i in range(1000):
        rig.put("front", _rgb(1))
        if i % 100 == 0:
            rig.put("left", _rgb(2))  # 10 frames, each must be served despite the flood
        time.sleep(0.0005)
    rig.settle(1010)
    assert rig.scheduler.accounting.snapshot("left")["processed"] == 10
    _assert_books_add_up(rig.scheduler)


def test_bad_input_on_one_camera_never_costs_another_camera_its_frame(rigs) -> None:
    engine = BatchEngine(poison=99)
    rig = rigs(engine, batch_wait_ms=0.0)
    gate = _hold_worker(rig, engine, 1)
    rig.put("front", "bad_encoding")  # rejected in conversion
    rig.put("left", "undecodable")  # conversion fails otherwise: counted as a failed frame
    rig.put("right", _rgb(99))  # fails alone
    gate.set()
    rig.settle(4)
    gate = _hold_worker(rig, engine, 50)
    rig.put("front", _rgb(5))
    rig.put("left", _rgb(6))
    rig.put("right", _rgb(99))  # makes the whole batch raise: its frames are retried one by one
    gate.set()
    books = rig.settle(8)
    assert books["processed"] == 4 and books["rejected"] == {"encoding": 1}
    assert books["dropped"] == {"inference_error": 3}
    assert {(c, red) for c, red, _ in rig.published} == {("front", 1), ("front", 50), ("front", 5), ("left", 6)}
    assert rig.scheduler.accounting.snapshot("right")["dropped"] == {"inference_error": 2}
    assert rig.scheduler.accounting.snapshot("left")["dropped"] == {"inference_error": 1}
    assert rig.scheduler.running
    _assert_books_add_up(rig.scheduler)


def test_fault_hook_and_publish_failure_are_per_frame(rigs) -> None:
    engine = BatchEngine()
    rig = rigs(engine, batch_wait_ms=0.0)

    def hook(rgb: np.ndarray) -> None:
        if rgb[0, 0, 0] == 7:
            raise RuntimeError("hook")

    def broken_publish(frame: Frame, result: SegmentationResult) -> None:
        raise OSError("context gone")

    rig.scheduler.before_inference = hook
    rig.put("front", _rgb(7))
    rig.put("left", _rgb(8))
    books = rig.settle(2)
    assert books["processed"] == 1 and books["dropped"] == {"inference_error": 1}
    assert rig.scheduler.failures.consecutive == 0  # the later success cleared the streak
    rig.scheduler.before_inference = None
    rig.scheduler.publish = broken_publish
    rig.put("right", _rgb(9))
    assert rig.settle(3)["dropped"]["publish_error"] == 1


def test_stale_frames_are_dropped_per_camera_policy(rigs) -> None:
    rig = rigs(BatchEngine())
    rig.policies["front"] = CameraPolicy(max_age_ms=100.0)
    old = time.time_ns() - 10**9  # one second old
    rig.scheduler.put("front", _rgb(1), stamp_ns=old)
    rig.scheduler.put("left", _rgb(2), stamp_ns=old)  # no limit on this camera
    books = rig.settle(2)
    assert rig.scheduler.accounting.snapshot("front")["dropped"] == {"stale": 1}
    assert books["processed"] == 1 and rig.published[0][0] == "left"


def test_reload_during_traffic_swaps_between_batches_and_loses_nothing(rigs) -> None:
    rig = rigs(BatchEngine(delay_s=0.002), batch_wait_ms=0.0)
    release = threading.Event()
    loaded = []

    def build() -> BatchEngine:
        assert release.wait(10.0)
        return BatchEngine(offset=100)

    assert rig.scheduler.load("v2", build, on_loaded=lambda: loaded.append(True))
    assert rig.scheduler.loading == "v2"
    assert not rig.scheduler.load("v3", build)  # one load at a time
    sent = 0
    for i in range(60):
        rig.put(CAMERAS[i % 3], _rgb(i))
        sent += 1
        if i == 30:
            release.set()
        time.sleep(0.003)
    books = rig.settle(sent)
    assert loaded == [True] and rig.scheduler.loading is None
    offsets = [label - red for _, red, label in rig.published]
    assert set(offsets) == {0, 100}
    assert offsets == sorted(offsets)  # the swap happened once, between frames
    assert books["processed"] + books["dropped"].get("superseded", 0) == sent
    _assert_books_add_up(rig.scheduler)


class PreparingEngine(BatchEngine):
    """A BatchEngine whose reload members record: it remembers the batch shapes it served,
    prepares shapes it is given, and records being closed."""

    def __init__(self, offset: int = 0) -> None:
        super().__init__(offset)
        self.prepared: list[tuple[tuple[int, int], ...]] = []
        self.closed = False

    def recent_batches(self) -> list[BatchShape]:
        return [(((4, 6),) * len(reds), (OutputRequest(),) * len(reds)) for reds in self.batches[-1:]]

    def prepare(self, sizes: Sequence[tuple[int, int]], outputs: Sequence[OutputRequest]) -> None:
        assert len(sizes) == len(outputs)
        self.prepared.append(tuple(sizes))

    def close(self) -> None:
        self.closed = True


def test_a_reload_prepares_the_served_batch_shapes_before_the_swap_and_closes_the_old_engine(rigs) -> None:
    old = PreparingEngine()
    rig = rigs(old)
    rig.put("front", _rgb(1))
    rig.settle(1)
    new = PreparingEngine(offset=100)
    swapped = threading.Event()

    def build() -> PreparingEngine:
        return new

    def on_loaded() -> None:
        assert new.prepared == [((4, 6),)]  # prepared in the loader thread, before serving
        swapped.set()

    assert rig.scheduler.load("v2", build, on_loaded=on_loaded)
    assert swapped.wait(10.0)
    deadline = time.monotonic() + 5.0
    while not old.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert old.closed and not new.closed
    rig.put("left", _rgb(2))
    rig.settle(2)
    assert rig.published[-1] == ("left", 2, 102)


def test_a_failed_load_keeps_the_engine_and_reports_why(rigs) -> None:
    engine = BatchEngine()
    rig = rigs(engine)
    reasons = []

    def build() -> BatchEngine:
        raise FileNotFoundError("no such checkpoint")

    assert rig.scheduler.load("broken", build, on_failed=reasons.append)
    deadline = time.monotonic() + 5.0
    while rig.scheduler.loading is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rig.scheduler.engine is engine
    assert reasons == ["FileNotFoundError: no such checkpoint"]
    assert "broken" in rig.scheduler.reload_error
    rig.put("front", _rgb(4))
    rig.settle(1)
    assert rig.published == [("front", 4, 4)]


def test_a_silent_camera_goes_warn_and_the_others_stay_ok(rigs) -> None:
    rig = rigs(BatchEngine())
    for camera in CAMERAS:
        rig.put(camera, _rgb(1))
    rig.settle(3)
    stats = rig.scheduler.camera_stats
    stats["right"].last_received -= 10.0  # as if "right" stopped 10 s ago
    for _ in range(3):
        rig.put("front", _rgb(2))
        rig.put("left", _rgb(3))
        rig.settle(0)
    reports = {
        camera: camera_report(
            end_to_end=stats[camera].end_to_end.summary(), accounting=rig.scheduler.accounting.snapshot(camera),
            interval_received=0, interval_lost=0, input_rate_hz=0.0, output_rate_hz=0.0,
            thresholds=Thresholds(latency_warn_ms=1e6, latency_error_ms=2e6), silent_s=stats[camera].silent_s(),
            silence_warn_s=3.0,
        )
        for camera in CAMERAS
    }
    assert reports["right"].level == WARN and "no frames for 10 s" in reports["right"].message
    assert reports["front"].level == OK and reports["left"].level == OK
    assert rig.scheduler.accounting.snapshot("front")["processed"] == 4


def test_stop_accounts_for_waiting_frames_and_refuses_new_ones() -> None:
    engine = BatchEngine()
    rig = Rig(engine, batch_wait_ms=0.0)
    gate = _hold_worker(rig, engine, 1)
    rig.put("left", _rgb(2))
    rig.put("right", _rgb(3))
    threading.Timer(0.2, gate.set).start()
    assert rig.scheduler.stop(5.0)
    rig.put("front", _rgb(4))
    books = rig.scheduler.accounting.snapshot()
    assert books["processed"] == 1 and books["dropped"] == {"shutdown": 3} and books["in_flight"] == 0


def test_frames_before_a_model_is_loaded_are_dropped_with_the_reason() -> None:
    scheduler = Scheduler(("a",), convert=lambda f: f.payload, publish=lambda f, r: None)
    scheduler.start()
    scheduler.put("a", _rgb(1), stamp_ns=1)
    scheduler.reject("a", "step")
    assert scheduler.accounting.snapshot("a")["dropped"] == {"model_not_loaded": 1}
    assert scheduler.accounting.snapshot("a")["rejected"] == {"step": 1}
    assert scheduler.stop(2.0)


def test_slots_take_round_robin_with_a_limit() -> None:
    slots = FrameSlots(("a", "b", "c"))

    def put(camera: str) -> None:
        slots.put(Frame(camera, None, 0, 0))

    for camera in "abc":
        put(camera)
    assert [f.camera for f in slots.take(0.0, limit=2)] == ["a", "b"]
    put("a")
    assert [f.camera for f in slots.take(0.0, limit=2)] == ["c", "a"]
    assert slots.take(0.0) == []
    put("b")
    assert [f.camera for f in slots.take(0.0, limit=1)] == ["b"]
    put("a")
    put("c")
    assert [f.camera for f in slots.take(0.0, limit=1)] == ["c"]  # c comes before a after b
    assert [f.camera for f in slots.close()] == ["a"]


def test_age_is_measured_from_the_stamp_or_else_from_arrival() -> None:
    on_clock = Frame("a", None, stamp_ns=1_000_000, received_ns=5_000_000)
    assert Scheduler.frame_age_ms(on_clock, now_ns=11_000_000) == 10.0
    # off the clock (here a zero stamp): from arrival, on the steady clock
    arrived = time.monotonic_ns() - 6_000_000
    off_clock = Frame("a", None, 0, 5_000_000, on_clock=False, received_steady_ns=arrived)
    assert 6.0 <= Scheduler.frame_age_ms(off_clock, now_ns=11_000_000) < 6.0 + 5_000


def test_pause_drops_waiting_arriving_and_finishing_frames_and_resume_serves_again(rigs) -> None:
    engine = BatchEngine()
    rig = rigs(engine, batch_wait_ms=0.0)
    gate = _hold_worker(rig, engine, 1)  # front's frame is inside the engine
    rig.put("left", _rgb(2))  # waiting in its slot
    threading.Timer(0.3, gate.set).start()
    assert rig.scheduler.pause("inactive", timeout=5.0)  # waits for the batch in flight
    assert rig.scheduler.paused == "inactive"
    rig.put("right", _rgb(3))  # arrives while paused
    books = rig.settle(3)
    assert books["processed"] == 0 and books["dropped"] == {"inactive": 3} and rig.published == []
    rig.scheduler.resume()
    assert rig.scheduler.paused is None
    rig.put("right", _rgb(4))
    rig.settle(4)
    assert rig.published == [("right", 4, 4)]
    _assert_books_add_up(rig.scheduler)


def test_pause_gives_up_waiting_after_its_timeout(rigs) -> None:
    engine = BatchEngine()
    rig = rigs(engine)
    gate = _hold_worker(rig, engine, 1)
    started = time.monotonic()
    assert not rig.scheduler.pause("inactive", timeout=0.2)
    assert time.monotonic() - started < 2.0
    gate.set()
    assert rig.scheduler.wait_idle(5.0)
    assert rig.settle(1)["dropped"] == {"inactive": 1}


def test_skip_books_a_frame_as_received_and_dropped_with_its_reason(rigs) -> None:
    rig = rigs(BatchEngine())
    rig.scheduler.skip("left", "no_subscribers")
    books = rig.scheduler.accounting.snapshot("left")
    assert books["received"] == 1 and books["dropped"] == {"no_subscribers": 1} and books["in_flight"] == 0
    assert rig.scheduler.camera_stats["left"].last_received is not None  # the camera is not silent


def test_release_waits_for_the_batch_closes_the_engine_and_holds_none(rigs) -> None:
    closed: list[BatchEngine] = []

    class Closing(BatchEngine):
        def close(self) -> None:
            closed.append(self)

    engine = Closing()
    rig = rigs(engine)
    gate = _hold_worker(rig, engine, 1)
    rig.scheduler.pause("inactive", timeout=0.0)
    threading.Timer(0.3, gate.set).start()
    assert rig.scheduler.release(timeout=5.0)
    assert engine.batches == [[1]]  # the batch it held finished before the engine was let go
    assert rig.scheduler.engine is None and closed == [engine]
    rig.scheduler.resume()
    rig.put("left", _rgb(2))
    assert rig.settle(2)["dropped"] == {"inactive": 1, "model_not_loaded": 1}


def test_nothing_is_published_once_pause_returns_even_after_its_timeout() -> None:
    publishing, release = threading.Event(), threading.Event()
    published: list[float] = []

    def publish(frame: Frame, result: SegmentationResult) -> None:
        publishing.set()
        assert release.wait(10.0)
        published.append(time.monotonic())

    scheduler = Scheduler(["a"], convert=lambda frame: frame.payload, publish=publish)
    scheduler.install(BatchEngine())
    scheduler.start()
    try:
        scheduler.put("a", _rgb(1), time.time_ns())
        assert publishing.wait(5.0)  # the result is being published
        threading.Timer(0.5, release.set).start()
        scheduler.pause("inactive", timeout=0.05)
        returned = time.monotonic()
        assert published and published[0] <= returned  # the publish in progress finished first
    finally:
        release.set()
        scheduler.stop(1.0)
