"""StampClock: which clock a frame's age runs on, and the mismatch state it reports."""

from __future__ import annotations

import time

import numpy as np
import pytest
from reliability_support import FakeEngine

from seg_perception.diagnostics import WARN, Thresholds, camera_report
from seg_perception.scheduler import CameraPolicy, Frame, Scheduler
from seg_perception.stamps import StampClock

S = 1_000_000_000
NOW = 1_750_000_000 * S  # a wall-clock time in 2025


def test_stamp_on_the_node_clock_is_aged_from_the_stamp() -> None:
    clock = StampClock(limit_s=5.0)
    arrival = clock.arrive(NOW - 30_000_000, NOW, received_steady_ns=100 * S)
    assert arrival.on_clock
    assert arrival.age_ms(NOW + 70_000_000, now_steady_ns=999 * S) == pytest.approx(100.0)
    assert clock.mismatch() is None and clock.take_transition() is None


@pytest.mark.parametrize(
    ("stamp", "received", "kind", "offset_s"),
    [
        (NOW - 3 * 3600 * S, NOW, "behind", 3 * 3600.0),     # a replayed bag
        (NOW + 3600 * S, NOW, "ahead", -3600.0),             # a clock one hour ahead
        (0, NOW, "zero_stamp", None),                        # ros2 topic pub
        (NOW - 3600 * S, 0, "node_clock_zero", None),        # use_sim_time without /clock
    ],
)
def test_off_clock_frames_are_aged_from_arrival(stamp: int, received: int, kind: str,
                                                offset_s: float | None) -> None:
    clock = StampClock(limit_s=5.0)
    arrival = clock.arrive(stamp, received, received_steady_ns=100 * S)
    assert not arrival.on_clock
    # 40 ms of steady time after arrival, whatever the node clock says
    assert arrival.age_ms(received + 10 * 3600 * S, now_steady_ns=100 * S + 40_000_000) == pytest.approx(40.0)
    mismatch = clock.mismatch()
    assert mismatch is not None and mismatch.kind == kind
    assert mismatch.offset_s == (pytest.approx(offset_s) if offset_s is not None else None)
    assert "age check skipped" in mismatch.message
    if kind in ("behind", "ahead"):
        assert "use_sim_time:=true" in mismatch.message and "ros2 bag play --clock" in mismatch.message


def test_limit_is_symmetric_and_adjustable() -> None:
    clock = StampClock(limit_s=5.0)
    assert clock.arrive(NOW - 4 * S, NOW).on_clock
    assert clock.arrive(NOW + 4 * S, NOW).on_clock
    assert not clock.arrive(NOW - 6 * S, NOW).on_clock
    assert not clock.arrive(NOW + 6 * S, NOW).on_clock
    clock.limit_s = 10.0
    assert clock.arrive(NOW - 6 * S, NOW).on_clock
    with pytest.raises(ValueError, match="> 0"):
        clock.limit_s = 0.0


def test_age_is_never_negative() -> None:
    clock = StampClock(limit_s=5.0)
    ahead = clock.arrive(NOW + 2 * S, NOW)  # on clock, but two seconds early
    assert ahead.age_ms(NOW) == 0.0
    off = clock.arrive(NOW + 3600 * S, NOW, received_steady_ns=50 * S)
    assert off.age_ms(NOW, now_steady_ns=49 * S) == 0.0


def test_mismatch_is_logged_once_and_clears_when_stamps_return() -> None:
    clock = StampClock(limit_s=5.0)
    clock.arrive(NOW - 3600 * S, NOW)
    first = clock.take_transition()
    assert first is not None and "1.0 h behind" in first
    for i in range(10):
        clock.arrive(NOW - 3600 * S + i, NOW + i)
    assert clock.take_transition() is None  # still the same state: nothing new to log
    assert clock.mismatch().frames_from_arrival == 11
    clock.arrive(0, NOW)  # a different kind of mismatch is worth a line
    assert "zero header stamp" in clock.take_transition()
    clock.arrive(NOW - 10_000_000, NOW)
    assert clock.mismatch() is None
    assert "back on the node clock" in clock.take_transition()
    assert clock.take_transition() is None


# -- in the scheduler: which frames are served, and how their age is measured --------------------
def _served(stamps: list[int], max_age_ms: float = 500.0) -> tuple[Scheduler, list[int]]:
    """Feed frames stamped ``stamps`` one at a time to a scheduler whose clock reads NOW."""
    published: list[int] = []
    scheduler = Scheduler(["cam"], convert=lambda frame: frame.payload,
                          publish=lambda frame, result: published.append(frame.stamp_ns),
                          policy=lambda camera: CameraPolicy(max_age_ms=max_age_ms), clock_ns=lambda: NOW)
    scheduler.install(FakeEngine())
    scheduler.start()
    rgb = np.zeros((4, 4, 3), np.uint8)
    try:
        for count, stamp in enumerate(stamps, 1):
            scheduler.put("cam", rgb, stamp, NOW)
            deadline = time.monotonic() + 10
            while scheduler.accounting.snapshot()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.005)
            assert scheduler.accounting.snapshot()["received"] == count
    finally:
        scheduler.stop(2.0)
    return scheduler, published


def test_off_clock_streams_are_served_not_dropped_as_stale() -> None:
    stamps = [NOW - 3 * 3600 * S, 0, NOW + 3600 * S]  # a replayed bag, topic pub, a clock ahead
    scheduler, published = _served(stamps)
    assert published == stamps
    assert scheduler.accounting.snapshot()["dropped"] == {}
    summary = scheduler.end_to_end.summary()
    assert summary["count"] == 3 and 0.0 <= summary["p50"] < 10_000  # from arrival: never negative
    assert "decode" in scheduler.stage_latency  # the message -> RGB stage is timed


def test_on_clock_stale_frames_are_still_dropped() -> None:
    scheduler, published = _served([NOW - 100_000_000, NOW - 2 * S])
    assert published == [NOW - 100_000_000]
    assert scheduler.accounting.snapshot()["dropped"] == {"stale": 1}
    assert scheduler.stamp_clocks["cam"].mismatch() is None


def test_batch_conversion_hook_gets_the_batch() -> None:
    batches: list[int] = []

    def convert_batch(frames: list[Frame]) -> list[object]:
        batches.append(len(frames))
        return [ValueError("bad") if frame.camera == "b" else frame.payload for frame in frames]

    published: list[str] = []
    scheduler = Scheduler(["a", "b"], convert=lambda frame: frame.payload, convert_batch=convert_batch,
                          publish=lambda frame, result: published.append(frame.camera), batch_wait_ms=500)
    scheduler.install(FakeEngine())
    rgb = np.zeros((4, 4, 3), np.uint8)
    scheduler.put("a", rgb, time.time_ns())
    scheduler.put("b", rgb, time.time_ns())
    scheduler.start()
    deadline = time.monotonic() + 10
    while scheduler.accounting.snapshot()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    scheduler.stop(2.0)
    assert batches == [2] and published == ["a"]
    assert scheduler.accounting.snapshot()["dropped"] == {"inference_error": 1}


def test_camera_report_warns_with_the_offset_and_says_latency_is_from_arrival() -> None:
    clock = StampClock()
    clock.arrive(NOW - 7200 * S, NOW)
    books = {"received": 1, "processed": 1, "dropped_total": 0, "rejected_total": 0, "in_flight": 0,
             "dropped": {}, "rejected": {}}
    summary = {"p50": 5.0, "p90": 5.0, "p99": 5.0, "max": 5.0, "count": 1}
    common = dict(end_to_end=summary, accounting=books, interval_received=1, interval_lost=0,
                  input_rate_hz=1.0, output_rate_hz=1.0, thresholds=Thresholds())
    report = camera_report(**common, clock_mismatch=clock.mismatch())
    assert report.level == WARN and "2.0 h behind the node clock" in report.message
    assert report.values["latency_from"] == "arrival" and report.values["clock_offset_s"] == "7200.000"
    assert camera_report(**common).values["latency_from"] == "stamp"
