"""Window statistics, table-driven: percentiles, latency windows, rates, frame books, failure bursts.

The numbers /diagnostics, the benches and the evaluation reports print come from here; each row
pins one figure to a value worked out by hand (or numpy's definition of a percentile).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from seg_perception.stats import FailureTracker, FrameAccounting, LatencyWindow, RateMeter, percentiles

ONE_TO_HUNDRED = [float(v) for v in range(1, 101)]


@pytest.mark.parametrize(("samples", "expected"), [
    ([7.0], {"p50": 7.0, "p90": 7.0, "p99": 7.0, "mean": 7.0, "max": 7.0, "count": 1}),
    ([1.0, 3.0], {"p50": 2.0, "p90": 2.8, "p99": 2.98, "mean": 2.0, "max": 3.0, "count": 2}),
    # linear interpolation between closest ranks (numpy's default), as the docs describe
    (ONE_TO_HUNDRED, {"p50": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5, "max": 100.0, "count": 100}),
    ([5.0, 1.0, 4.0, 2.0, 3.0], {"p50": 3.0, "p90": 4.6, "p99": 4.96, "mean": 3.0, "max": 5.0, "count": 5}),
    # one slow frame in ten moves p99 and max, not p50; p90 sits just below it
    ([10.0] * 9 + [100.0], {"p50": 10.0, "p90": 19.0, "p99": 91.9, "mean": 19.0, "max": 100.0, "count": 10}),
])
def test_percentiles(samples: list[float], expected: dict[str, float]) -> None:
    summary = percentiles(samples)
    assert summary is not None and set(summary) == set(expected)
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-9), key
    assert isinstance(summary["count"], int)


def test_percentiles_agree_with_numpy_on_random_samples() -> None:
    samples = np.random.default_rng(0).gamma(2.0, 10.0, size=997)
    summary = percentiles(samples)
    for q in (50, 90, 99):
        assert summary[f"p{q}"] == pytest.approx(float(np.percentile(samples, q)), rel=1e-12)
    assert summary["p50"] < summary["p90"] < summary["p99"] < summary["max"]


def test_no_samples_is_no_summary() -> None:
    assert percentiles([]) is None
    assert percentiles(np.array([])) is None


@pytest.mark.parametrize(("size", "added", "expected_p50", "expected_count"), [
    (300, [], 0.0, 0),
    (300, [4.0, 2.0], 3.0, 2),
    (3, [100.0, 100.0, 1.0, 2.0, 3.0], 2.0, 3),   # the window keeps only the newest `size` samples
    (1, [9.0, 1.0], 1.0, 1),
])
def test_latency_window_keeps_the_last_samples(size: int, added: list[float], expected_p50: float,
                                               expected_count: int) -> None:
    window = LatencyWindow(size)
    for value in added:
        window.add(value)
    summary = window.summary()
    assert set(summary) == {"p50", "p90", "p99", "mean", "max", "count"}
    assert summary["p50"] == expected_p50 and summary["count"] == expected_count
    if expected_count:
        assert summary == percentiles(added[-size:])
    else:
        assert all(value == 0 for value in summary.values())


def test_latency_window_p90_is_the_90th_percentile() -> None:
    window = LatencyWindow(100)
    for value in ONE_TO_HUNDRED:
        window.add(value)
    summary = window.summary()
    assert (summary["p50"], summary["p90"], summary["p99"]) == pytest.approx((50.5, 90.1, 99.01))


# Ticks at exact binary fractions of a second, so the expected rates are exact.
@pytest.mark.parametrize(("ticks", "now", "window_s", "rate"), [
    ([], 10.0, 5.0, 0.0),
    ([1.0], 1.0, 5.0, 0.0),                                     # one event: no rate yet
    ([k / 8 for k in range(33)], 4.0, 5.0, 8.0),                # 8 Hz for 4 s: 32 intervals / 4 s
    ([k / 2 for k in range(9)], 4.0, 5.0, 2.0),                 # 2 Hz
    ([k / 8 for k in range(33)], 8.0, 5.0, 9 / 5),              # stopped at 4 s: 3..8 s holds 9 ticks
    ([k / 8 for k in range(81)], 10.0, 5.0, 41 / 5),            # full window: ticks in [5, 10] over 5 s
    ([k / 8 for k in range(33)], 20.0, 5.0, 0.0),               # silent for longer than the window
    ([k / 4 for k in range(5)], 1.0, 0.5, 3 / 0.5),             # a short window: 0.5, 0.75, 1.0
])
def test_rate_meter(ticks: list[float], now: float, window_s: float, rate: float) -> None:
    meter = RateMeter(window_s)
    for t in ticks:
        meter.tick(now=t)
    assert meter.rate(now=now) == pytest.approx(rate)


def test_rate_meter_decays_when_events_stop() -> None:
    meter = RateMeter(5.0)
    for k in range(9):
        meter.tick(now=k / 2)  # 2 Hz from 0 to 4 s
    assert meter.rate(now=4.0) == pytest.approx(2.0)
    # 9, 7, 5, 3 ticks left in the last 5 s
    assert [meter.rate(now=t) for t in (5.0, 6.0, 7.0, 8.0)] == pytest.approx([1.8, 1.4, 1.0, 0.6])
    assert meter.rate(now=9.5) == 0.0


# -- frame books ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("events", "expected"), [
    ([], {"received": 0, "processed": 0, "dropped_total": 0, "rejected_total": 0, "in_flight": 0}),
    (["receive", "receive", "process"], {"received": 2, "processed": 1, "in_flight": 1}),
    (["receive"] * 4 + ["process", "drop:stale", "drop:superseded", "reject:bad_encoding"],
     {"received": 4, "processed": 1, "dropped_total": 2, "rejected_total": 1, "in_flight": 0,
      "dropped": {"stale": 1, "superseded": 1}, "rejected": {"bad_encoding": 1}}),
    (["receive"] * 3 + ["drop:stale"] * 3, {"dropped": {"stale": 3}, "dropped_total": 3, "in_flight": 0}),
])
def test_frame_books(events: list[str], expected: dict[str, object]) -> None:
    books = FrameAccounting()
    for event in events:
        kind, _, reason = event.partition(":")
        getattr(books, kind)(reason) if reason else getattr(books, kind)()
    snapshot = books.snapshot()
    for key, value in expected.items():
        assert snapshot[key] == value, key
    assert snapshot["received"] == (snapshot["processed"] + snapshot["dropped_total"] + snapshot["rejected_total"]
                                    + snapshot["in_flight"])


def test_camera_books_add_up_to_the_total_under_concurrency() -> None:
    books = FrameAccounting()

    def camera(name: str, frames: int) -> None:
        for i in range(frames):
            books.receive(name)
            if i % 3 == 0:
                books.drop("superseded", name)
            elif i % 3 == 1:
                books.reject("bad_size", name)
            else:
                books.process(name)

    threads = [threading.Thread(target=camera, args=(name, n)) for name, n in (("front", 300), ("rear", 301))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total, cameras = books.snapshots()
    assert set(cameras) == {"front", "rear"}
    for key in ("received", "processed", "dropped_total", "rejected_total", "in_flight"):
        assert total[key] == cameras["front"][key] + cameras["rear"][key], key
    assert total["received"] == 601 and total["in_flight"] == 0
    assert cameras["rear"] == books.snapshot("rear") and cameras["front"]["dropped"] == {"superseded": 100}
    assert books.snapshot("absent")["received"] == 0
    assert (books.received, books.processed) == (601, total["processed"])


# -- failure bursts --------------------------------------------------------------------------------
@pytest.mark.parametrize(("threshold", "window_s", "failures", "now", "burst"), [
    (3, 10.0, [0.0, 1.0], 1.0, False),            # two of three
    (3, 10.0, [0.0, 1.0, 2.0], 2.0, True),
    (3, 10.0, [0.0, 1.0, 2.0], 10.0, True),       # the oldest is exactly window_s old
    (3, 10.0, [0.0, 1.0, 2.0], 10.01, False),     # ... and then older
    (3, 10.0, [0.0, 20.0, 40.0], 40.0, False),    # three in a row, spread over 40 s
    (3, 10.0, [0.0, 20.0, 21.0, 22.0], 22.0, True),  # only the last three count
    (1, 1.0, [5.0], 5.5, True),
])
def test_failure_bursts(threshold: int, window_s: float, failures: list[float], now: float, burst: bool) -> None:
    tracker = FailureTracker(threshold, window_s)
    for t in failures:
        tracker.failure("RuntimeError: x", now=t)
    assert tracker.burst(now=now) is burst
    assert tracker.consecutive == tracker.total == len(failures)
    assert tracker.last_error == "RuntimeError: x"


def test_a_success_ends_a_burst_and_configure_keeps_recent_failures() -> None:
    tracker = FailureTracker(5, 10.0)
    for t in range(5):
        tracker.failure("e", now=float(t))
    assert tracker.burst(now=5.0)
    tracker.configure(threshold=3, window_s=10.0)  # a lower threshold: the last three still count
    assert tracker.burst(now=5.0)
    tracker.configure(threshold=6, window_s=10.0)
    assert not tracker.burst(now=5.0)
    tracker.success()
    assert (tracker.consecutive, tracker.total) == (0, 5) and not tracker.burst(now=5.0)
