"""Health rules, table-driven: every level boundary of the node's /diagnostics status.

Each row is one situation and the level (and message) an operator must see for it. Boundaries are
tested on both sides: a rule that moves (a threshold multiplied, ``>`` turned into ``>=``, p90
swapped for p50 or p99) fails a row.
"""

from __future__ import annotations

from typing import Any

import pytest

from seg_perception.diagnostics import (
    ERROR,
    OK,
    WARN,
    HealthReport,
    Thresholds,
    camera_report,
    engine_report,
    merge_reports,
)
from seg_perception.stamps import ClockMismatch


def latency(p90: float, *, p50: float | None = None, p99: float | None = None, count: int = 100) -> dict[str, float]:
    """A latency window summary whose p90 is ``p90``; p50 below and p99 above unless given, so a
    rule reading the wrong percentile lands on another level."""
    p50 = p90 / 4 if p50 is None else p50
    p99 = p90 * 4 if p99 is None else p99
    return {"p50": p50, "p90": p90, "p99": p99, "mean": p50, "max": p99, "count": count}


EMPTY = {"p50": 0, "p90": 0, "p99": 0, "mean": 0, "max": 0, "count": 0}


def books(received: int = 10, processed: int = 10, dropped: dict[str, int] | None = None,
          rejected: dict[str, int] | None = None) -> dict[str, Any]:
    dropped, rejected = dropped or {}, rejected or {}
    lost = sum(dropped.values()) + sum(rejected.values())
    return {"received": received, "processed": processed, "dropped": dropped, "rejected": rejected,
            "dropped_total": sum(dropped.values()), "rejected_total": sum(rejected.values()),
            "in_flight": received - processed - lost}


def camera(**overrides: Any) -> HealthReport:
    """A healthy camera (10 frames, none lost, no latency yet) with ``overrides`` applied."""
    values: dict[str, Any] = dict(end_to_end=EMPTY, accounting=books(), interval_received=10, interval_lost=0,
                                  input_rate_hz=10.0, output_rate_hz=10.0, thresholds=Thresholds())
    values.update(overrides)
    return camera_report(**values)


def engine(**overrides: Any) -> HealthReport:
    values: dict[str, Any] = dict(stages={}, engine=None)
    values.update(overrides)
    return engine_report(**values)


def test_defaults_are_the_documented_thresholds() -> None:
    assert Thresholds() == Thresholds(latency_warn_ms=100.0, latency_error_ms=500.0, drop_warn_ratio=0.2,
                                      drop_error_ratio=0.8)


# -- end-to-end latency: p90 against latency_warn_ms (100) and latency_error_ms (500) ---------------
@pytest.mark.parametrize(("summary", "level", "message"), [
    (latency(50.0), OK, "ok"),
    (latency(100.0), OK, "ok"),                                   # at the WARN threshold: not above
    (latency(100.01), WARN, "end-to-end p90 100.0 ms > 100 ms"),
    (latency(499.9), WARN, "end-to-end p90 499.9 ms > 100 ms"),
    (latency(500.0), WARN, "end-to-end p90 500.0 ms > 100 ms"),  # at the ERROR threshold: not above
    (latency(500.1), ERROR, "end-to-end p90 500.1 ms > 500 ms"),
    (latency(5000.0), ERROR, "end-to-end p90 5000.0 ms > 500 ms"),
    # the rule reads p90: a slow p99 alone is not a problem, a fast p50 does not hide one
    (latency(90.0, p50=10.0, p99=900.0), OK, "ok"),
    (latency(600.0, p50=20.0, p99=700.0), ERROR, "end-to-end p90 600.0 ms > 500 ms"),
    (latency(150.0, p50=150.0, p99=150.0), WARN, "end-to-end p90 150.0 ms > 100 ms"),
    # an empty window (no frame served yet) has no latency to judge, whatever its fields say
    (latency(900.0, count=0), OK, "ok"),
])
def test_latency_levels(summary: dict[str, float], level: int, message: str) -> None:
    report = camera(end_to_end=summary)
    assert (report.level, report.message) == (level, message)
    for key in ("p50", "p90", "p99", "max"):
        assert report.values[f"end_to_end_ms_{key}"] == f"{summary[key]:.2f}"


@pytest.mark.parametrize(("p90", "level"), [(49.0, OK), (51.0, WARN), (199.0, WARN), (201.0, ERROR)])
def test_latency_thresholds_are_the_configured_ones(p90: float, level: int) -> None:
    thresholds = Thresholds(latency_warn_ms=50.0, latency_error_ms=200.0)
    assert camera(end_to_end=latency(p90), thresholds=thresholds).level == level


# -- drops: lost / received in the last interval against drop_warn_ratio and drop_error_ratio ------
@pytest.mark.parametrize(("received", "lost", "level", "ratio"), [
    (10, 0, OK, "0.00"),
    (100, 19, OK, "0.19"),
    (5, 1, WARN, "0.20"),      # exactly the WARN ratio: WARN
    (100, 79, WARN, "0.79"),
    (10, 8, ERROR, "0.80"),    # exactly the ERROR ratio: ERROR
    (10, 10, ERROR, "1.00"),
    (0, 0, OK, None),          # no frames this interval: no ratio (silence is its own rule)
])
def test_drop_ratio_levels(received: int, lost: int, level: int, ratio: str | None) -> None:
    report = camera(interval_received=received, interval_lost=lost)
    assert report.level == level
    assert report.values.get("drop_ratio") == ratio
    if level != OK:
        assert report.message == f"{lost / received:.0%} of recent frames dropped or rejected"


@pytest.mark.parametrize(("ratio", "level"), [(0.04, OK), (0.05, WARN), (0.49, WARN), (0.5, ERROR)])
def test_drop_thresholds_are_the_configured_ones(ratio: float, level: int) -> None:
    thresholds = Thresholds(drop_warn_ratio=0.05, drop_error_ratio=0.5)
    assert camera(interval_received=100, interval_lost=round(100 * ratio), thresholds=thresholds).level == level


def test_books_are_reported_per_reason() -> None:
    report = camera(accounting=books(received=12, processed=6, dropped={"stale": 2, "superseded": 1},
                                     rejected={"bad_encoding": 2}))
    assert report.values["frames_received"] == "12" and report.values["frames_processed"] == "6"
    assert report.values["frames_dropped_total"] == "3" and report.values["frames_rejected_total"] == "2"
    assert report.values["frames_in_flight"] == "1"
    assert report.values["dropped_stale"] == "2" and report.values["dropped_superseded"] == "1"
    assert report.values["rejected_bad_encoding"] == "2"
    assert report.level == OK  # the books alone are not a level: the interval ratio is


# -- silence: seconds since the camera's last frame against silence_warn_s ---------------------------
@pytest.mark.parametrize(("silent_s", "warn_s", "level", "message"), [
    (None, 5.0, OK, "ok"),        # no frame yet: not silent, just not started
    (4.9, 5.0, OK, "ok"),
    (5.0, 5.0, WARN, "no frames for 5 s"),
    (60.0, 5.0, WARN, "no frames for 60 s"),
    (600.0, 0.0, OK, "ok"),       # silence_warn_s 0 turns the rule off
])
def test_silence_levels(silent_s: float | None, warn_s: float, level: int, message: str) -> None:
    report = camera(silent_s=silent_s, silence_warn_s=warn_s, interval_received=0)
    assert (report.level, report.message) == (level, message)
    if silent_s is not None:
        assert report.values["seconds_since_last_frame"] == f"{silent_s:.2f}"


# -- clock mismatch: WARN with the fix; latency then runs from arrival -------------------------------
@pytest.mark.parametrize(("mismatch", "offset"), [
    (None, None),
    (ClockMismatch("behind", 7200.0, 12), "7200.000"),
    (ClockMismatch("ahead", -30.0, 1), "-30.000"),
    (ClockMismatch("zero_stamp", None, 3), None),
    (ClockMismatch("node_clock_zero", None, 3), None),
])
def test_clock_mismatch_levels(mismatch: ClockMismatch | None, offset: str | None) -> None:
    report = camera(clock_mismatch=mismatch)
    if mismatch is None:
        assert (report.level, report.message, report.values["latency_from"]) == (OK, "ok", "stamp")
        assert "clock_mismatch" not in report.values
        return
    assert (report.level, report.message) == (WARN, mismatch.message)
    assert report.values["latency_from"] == "arrival"
    assert report.values["clock_mismatch"] == mismatch.kind
    assert report.values.get("clock_offset_s") == offset
    assert report.values["frames_aged_from_arrival"] == str(mismatch.frames_from_arrival)


# -- the engine: startup, loading, reload and failure bursts -----------------------------------------
@pytest.mark.parametrize(("overrides", "level", "message"), [
    ({}, OK, "ok"),
    ({"model_loading": "regseg from w.pth"}, OK, "ok"),  # loading is news, not a problem
    ({"startup_error": "CheckpointNotFoundError: w.pth"}, ERROR, "model not loaded: CheckpointNotFoundError: w.pth"),
    ({"reload_error": "x.pth: CheckpointNotFoundError"}, WARN,
     "model reload failed, previous model still serving: x.pth: CheckpointNotFoundError"),
    ({"consecutive_failures": 4, "failure_burst": False, "last_error": "RuntimeError: boom"}, OK, "ok"),
    ({"consecutive_failures": 5, "failure_burst": True, "last_error": "RuntimeError: boom"}, ERROR,
     "5 consecutive inference failures (RuntimeError: boom)"),
    ({"reload_error": "bad", "failure_burst": True, "consecutive_failures": 5, "last_error": "E"}, ERROR,
     "5 consecutive inference failures (E); model reload failed, previous model still serving: bad"),
])
def test_engine_levels(overrides: dict[str, Any], level: int, message: str) -> None:
    report = engine(**overrides)
    assert (report.level, report.message) == (level, message)
    assert report.values["consecutive_failures"] == str(overrides.get("consecutive_failures", 0))
    for key in ("model_loading", "reload_error", "last_error"):
        assert report.values.get(key) == overrides.get(key)


def test_engine_values_carry_stages_batches_and_description() -> None:
    report = engine(stages={"inference": latency(20.0, p50=10.0, p99=30.0)}, engine={"model": "regseg", "fps": 12.5},
                    batch_sizes={"p50": 2, "mean": 2.5, "max": 4, "count": 10}, gpu_memory_mb=512.0)
    assert report.values["inference_ms_p50"] == "10.00" and report.values["inference_ms_p90"] == "20.00"
    assert report.values["inference_ms_p99"] == "30.00" and report.values["inference_ms_max"] == "30.00"
    assert report.values["batch_size_p50"] == "2.00" and report.values["batch_size_mean"] == "2.50"
    assert report.values["batch_size_max"] == "4.00"
    assert report.values["model"] == "regseg" and report.values["fps"] == "12.50"
    assert report.values["gpu_memory_mb"] == "512.00"
    assert "batch_size_p50" not in engine(batch_sizes={"count": 0}).values  # no batch yet


# -- several problems at once: the worst level, every message -----------------------------------------
@pytest.mark.parametrize(("parts", "level", "message"), [
    ((engine(), camera()), OK, "ok"),
    ((engine(), camera(interval_lost=3)), WARN, "30% of recent frames dropped or rejected"),
    ((engine(reload_error="r"), camera(end_to_end=latency(600.0))), ERROR,
     "model reload failed, previous model still serving: r; end-to-end p90 600.0 ms > 500 ms"),
    ((engine(startup_error="s"), camera(interval_lost=3)), ERROR,
     "model not loaded: s; 30% of recent frames dropped or rejected"),
])
def test_merged_report_takes_the_worst_level_and_every_message(parts: tuple[HealthReport, ...], level: int,
                                                                message: str) -> None:
    merged = merge_reports(*parts)
    assert (merged.level, merged.message) == (level, message)
    for part in parts:
        assert part.values.items() <= merged.values.items()


def test_one_camera_reports_every_problem_it_has() -> None:
    report = camera(end_to_end=latency(200.0), interval_received=10, interval_lost=9, silent_s=7.0,
                    silence_warn_s=5.0, clock_mismatch=ClockMismatch("zero_stamp", None, 1))
    assert report.level == ERROR
    mismatch = ClockMismatch("zero_stamp", None, 1).message
    assert report.message == "; ".join([mismatch, "end-to-end p90 200.0 ms > 100 ms",
                                        "90% of recent frames dropped or rejected", "no frames for 7 s"])


def test_echoed_text_is_bounded() -> None:
    report = engine(startup_error="x" * 100_000, last_error="y" * 100_000)
    assert len(report.message) <= 1000 and len(report.values["last_error"]) < 1000
