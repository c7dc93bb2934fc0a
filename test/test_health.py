"""Health reports from the scheduler's books, without ROS: drop ratios and the clock status cover
the diagnostics period since the previous report (not the whole run, not only the last frame)."""

from __future__ import annotations

import time

import numpy as np

from seg_perception import params as P
from seg_perception.diagnostics import ERROR, OK, WARN
from seg_perception.health import HealthReporter
from seg_perception.scheduler import Scheduler
from seg_perception.stamps import StampClock

S = 1_000_000_000
NOW = 1_750_000_000 * S
VALUES = {**P.defaults(), "silence_warn_s": 0.0}
RGB = np.zeros((4, 4, 3), np.uint8)


def _scheduler(cameras: list[str]) -> Scheduler:
    # no engine and no worker: every frame is put and dropped as model_not_loaded, or rejected
    return Scheduler(cameras, convert=lambda frame: frame.payload, publish=lambda f, r: None,
                     clock_ns=lambda: NOW)


def test_period_mismatch_covers_every_frame_of_the_period() -> None:
    clock = StampClock(limit_s=5.0)
    clock.arrive(NOW - 3600 * S, NOW)  # off the clock
    clock.arrive(NOW, NOW)  # back on it: the latest frame alone looks fine
    assert clock.mismatch() is None
    seen = clock.period_mismatch()
    assert seen is not None and seen.kind == "behind"
    assert clock.period_mismatch() is None  # a new period with no frame off the clock
    clock.arrive(0, NOW)
    assert clock.period_mismatch().kind == "zero_stamp"
    assert clock.period_mismatch().kind == "zero_stamp"  # still off the clock: reported every period


def test_mixed_stamps_keep_the_camera_warn_over_the_period() -> None:
    scheduler = _scheduler([""])
    health = HealthReporter(scheduler)
    for stamp in (NOW - 3600 * S, NOW, NOW - 3600 * S, NOW):  # on and off the clock by turns
        scheduler.put("", RGB, stamp, NOW)
    (status,) = health.statuses(VALUES, (), {"": "/camera/image_raw"})
    assert status.report.values["clock_mismatch"] == "behind" and "behind the node clock" in status.report.message
    (status,) = health.statuses(VALUES, (), {"": "/camera/image_raw"})
    assert "clock_mismatch" not in status.report.values  # no frame in this period


def test_drop_ratio_covers_the_frames_since_the_previous_report() -> None:
    scheduler = _scheduler(["a", "b"])
    health = HealthReporter(scheduler)
    for _ in range(10):
        scheduler.put("a", RGB, NOW, NOW)  # dropped: no model
    scheduler.reject("b", "encoding")
    first = {s.name_suffix: s for s in health.statuses(VALUES, ("a", "b"), {"a": "/a", "b": "/b"})}
    assert first[" camera a"].report.level == ERROR and first[" camera a"].report.values["drop_ratio"] == "1.00"
    assert first[" camera b"].hardware_id == "/b" and first[" camera b"].report.values["image_topic"] == "/b"
    assert first[" engine"].report.values["total_frames_received"] == "11"
    assert health.interval("a", scheduler.accounting.snapshot("a")) == (0, 0)
    second = {s.name_suffix: s for s in health.statuses(VALUES, ("a", "b"), {"a": "/a", "b": "/b"})}
    assert "drop_ratio" not in second[" camera a"].report.values  # nothing new: history does not count
    assert second[" camera a"].report.level == OK


def test_engine_report_carries_startup_failures() -> None:
    scheduler = _scheduler([""])
    scheduler.startup_failed("CheckpointNotFoundError: " + "x" * 5000)
    (status,) = HealthReporter(scheduler).statuses(VALUES, (), {"": "/c"})
    assert status.report.level == ERROR and "model not loaded" in status.report.message
    assert len(scheduler.startup_error) <= 500


def test_frames_deliberately_not_served_do_not_count_as_lost() -> None:
    scheduler = _scheduler(["a"])
    health = HealthReporter(scheduler)
    for _ in range(8):
        scheduler.skip("a", "no_subscribers")  # lazy: nobody listens
    scheduler.skip("a", "inactive")
    scheduler.put("a", RGB, NOW, NOW)  # one real loss (no model)
    scheduler.reject("a", "encoding")  # and one rejection
    assert health.interval("a", scheduler.accounting.snapshot("a")) == (2, 2)
    for _ in range(8):
        scheduler.skip("a", "no_subscribers")
    (_, camera) = health.statuses(VALUES, ("a",), {"a": "/a"})
    assert camera.report.level == OK and "drop_ratio" not in camera.report.values, camera.report
    assert camera.report.values["dropped_no_subscribers"] == "16"  # the books still show them


def test_a_managed_node_reports_its_state_in_every_status() -> None:
    scheduler = _scheduler(["a", "b"])
    values = {**VALUES, "silence_warn_s": 0.001}
    scheduler.skip("a", "inactive")  # camera a delivered a frame (not served), then went silent
    time.sleep(0.01)
    health = HealthReporter(scheduler)
    statuses = health.statuses(values, ("a", "b"), {"a": "/a", "b": "/b"}, state="inactive")
    assert [s.report.values["lifecycle_state"] for s in statuses] == ["inactive"] * 3
    camera_a = statuses[1].report
    assert camera_a.level == OK and camera_a.message == "inactive: not serving"  # silent, but not serving
    active = health.statuses(values, ("a", "b"), {"a": "/a", "b": "/b"}, state="active")
    assert active[1].report.level == WARN and "no frames for" in active[1].report.message
    assert all(s.report.values["lifecycle_state"] == "active" for s in active)
    plain = health.statuses(values, ("a", "b"), {"a": "/a", "b": "/b"})
    assert all("lifecycle_state" not in s.report.values for s in plain)


def test_a_failed_configure_is_error_whatever_the_state() -> None:
    scheduler = _scheduler([""])
    scheduler.startup_failed("ValueError: bad checkpoint")
    (status,) = HealthReporter(scheduler).statuses(VALUES, (), {"": "/c"}, state="unconfigured")
    assert status.report.level == ERROR and "bad checkpoint" in status.report.message
    assert status.report.values["lifecycle_state"] == "unconfigured"
