"""Faults inside inference: each failed frame is dropped and counted under its reason, the node
keeps serving, a burst of failures raises ERROR, and recovery (or time) brings it back to OK."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from reliability_support import NodeHarness, image_msg

from seg_perception.diagnostics import ERROR, OK, Thresholds, camera_report, engine_report, merge_reports
from seg_perception.stats import FailureTracker, LatencyWindow

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def harness():
    """The real engine (RegSeg, CPU); faults are injected through the node's test hook, and into
    the torch module's forward (hence backend torch: the CPU default runs an ONNX export). The
    latency thresholds are out of reach: these tests are about failures, and a busy CPU must not
    turn a recovered node's status into a latency ERROR."""
    with NodeHarness({"failure_error_count": 4, "failure_window_s": 5.0, "backend": "torch",
                      "latency_warn_ms": 60000.0, "latency_error_ms": 60000.0}) as h:
        yield h


@pytest.fixture(autouse=True)
def no_hook(harness):
    yield
    harness.node.scheduler.before_inference = None


def _send(harness: NodeHarness, frame_id: str, red: int = 0) -> None:
    """Publish one frame and wait until the node has decided its fate (and, when it was served,
    until its labels have arrived)."""
    received = harness.node.scheduler.accounting.received
    processed = harness.node.scheduler.accounting.processed
    harness.publisher.publish(image_msg(np.full((32, 64, 3), red, np.uint8), frame_id=frame_id))
    harness.wait_received(received + 1)
    harness.wait_settled()
    if harness.node.scheduler.accounting.processed > processed:
        harness.wait_labels(frame_id)


def _raise_on_red(value: int, exc: Exception):
    def hook(rgb: np.ndarray) -> None:
        if rgb[0, 0, 0] == value:
            raise exc
    return hook


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RuntimeError("injected failure"), "inference_error"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    ],
)
def test_a_failing_frame_is_dropped_counted_and_the_next_one_served(harness, exc, reason) -> None:
    before = harness.node.scheduler.accounting.snapshot()
    harness.node.scheduler.before_inference = _raise_on_red(13, exc)
    _send(harness, f"bad_{reason}", red=13)
    _send(harness, f"good_{reason}", red=14)
    after = harness.node.scheduler.accounting.snapshot()
    assert after["dropped"].get(reason, 0) == before["dropped"].get(reason, 0) + 1
    assert after["processed"] == before["processed"] + 1
    frame_ids = {r.frame_id for r in list(harness.labels)}
    assert f"good_{reason}" in frame_ids and f"bad_{reason}" not in frame_ids
    assert harness.node.scheduler.failures.consecutive == 0


def test_an_exception_raised_inside_the_model_forward_is_contained(harness) -> None:
    def explode(module, inputs):
        raise RuntimeError("fault inside forward")

    before = harness.node.scheduler.accounting.snapshot()["dropped"].get("inference_error", 0)
    handle = harness.node.scheduler.engine.model.register_forward_pre_hook(explode)
    try:
        _send(harness, "inside_forward")
    finally:
        handle.remove()
    _send(harness, "after_forward_fault")
    assert harness.node.scheduler.accounting.snapshot()["dropped"]["inference_error"] == before + 1
    assert harness.labels[-1].frame_id == "after_forward_fault"


def test_a_burst_of_failures_is_error_and_recovery_returns_to_ok(harness) -> None:
    harness.node.scheduler.before_inference = _raise_on_red(99, RuntimeError("model broken"))
    for i in range(3):
        _send(harness, f"burst{i}", red=99)
    assert "consecutive" not in harness.next_diagnostic().message  # 3 < failure_error_count
    _send(harness, "burst3", red=99)  # the 4th in a row: failure_error_count reached
    error = harness.wait_level(ERROR)
    assert "4 consecutive inference failures" in error.message and "model broken" in error.message
    assert error.values["consecutive_failures"] == "4"
    _send(harness, "recovered", red=1)
    ok = harness.wait_level(OK)
    assert ok.values["consecutive_failures"] == "0"


def test_a_burst_ages_out_after_the_window(harness) -> None:
    assert harness.node.set_parameters([Parameter("failure_window_s", value=0.6)])[0].successful
    try:
        harness.node.scheduler.before_inference = _raise_on_red(77, RuntimeError("transient"))
        for i in range(4):
            _send(harness, f"aging{i}", red=77)
        assert harness.wait_level(ERROR).values["consecutive_failures"] == "4"
        ok = harness.wait_level(OK, timeout=5.0)  # no frame at all: only time passes
        assert ok.values["consecutive_failures"] == "4"
    finally:
        harness.node.set_parameters([Parameter("failure_window_s", value=5.0)])


def test_failure_tracker_needs_consecutive_failures_within_the_window() -> None:
    tracker = FailureTracker(threshold=3, window_s=10.0)
    for t in (0.0, 1.0):
        tracker.failure("x", now=t)
    assert not tracker.burst(now=1.0)
    tracker.failure("x", now=2.0)
    assert tracker.burst(now=2.0) and tracker.burst(now=10.0)
    assert not tracker.burst(now=10.5)  # the oldest of the three is older than the window
    tracker.failure("x", now=11.0)
    assert tracker.burst(now=11.0)  # the last three (1, 2, 11) span 10 s
    tracker.success()
    assert not tracker.burst(now=11.0) and tracker.consecutive == 0
    for t in (0.0, 20.0, 40.0):  # three in a row, but spread over 40 s
        tracker.failure("x", now=t)
    assert not tracker.burst(now=40.0)


def _report(**kwargs):
    empty = LatencyWindow().summary()
    books = {"received": 10, "processed": 10, "dropped": {}, "rejected": {}, "dropped_total": 0,
             "rejected_total": 0, "in_flight": 0}
    camera = dict(end_to_end=empty, accounting=books, interval_received=10, interval_lost=0,
                  input_rate_hz=10.0, output_rate_hz=10.0, thresholds=Thresholds())
    engine = dict(stages={}, engine=None)
    for key, value in kwargs.items():
        (engine if key in inspect.signature(engine_report).parameters else camera)[key] = value
    return merge_reports(engine_report(**engine), camera_report(**camera))


def test_report_levels() -> None:
    assert _report().level == OK
    assert _report(interval_lost=3).level == 1  # 30% dropped: WARN
    assert _report(interval_lost=9).level == ERROR
    burst = _report(consecutive_failures=5, failure_burst=True, last_error="RuntimeError: boom")
    assert burst.level == ERROR and "RuntimeError: boom" in burst.message
    assert _report(consecutive_failures=5, failure_burst=False).level == OK
    reload = _report(reload_error="x.pth: CheckpointNotFoundError")
    assert reload.level == 1 and reload.values["reload_error"] == "x.pth: CheckpointNotFoundError"
    assert _report(startup_error="CheckpointNotFoundError: x").level == ERROR
