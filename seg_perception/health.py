"""The scheduler's books and statistics turned into health reports, once per diagnostics period.

:mod:`~seg_perception.diagnostics` holds the rules (when a report is WARN or ERROR);
:class:`HealthReporter` feeds them from a :class:`~seg_perception.scheduler.Scheduler` and keeps
what a report needs from the previous one: the drop ratio and the clock status cover the frames
of the period since the previous report, not the whole run (an hour of good frames must not hide
a camera that drops everything now) and not only the last frame. Frames the node chose not to
serve (``no_subscribers``, ``inactive``: :data:`~seg_perception.scheduler.NOT_SERVED`) are neither
received nor lost for that ratio. A lifecycle node reports in every state: each status carries the
state, and while the node is not active a camera that sends nothing is not a problem. The node
wraps the results in ``diagnostic_msgs/DiagnosticStatus``; nothing here needs ROS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .diagnostics import OK, HealthReport, Thresholds, camera_report, engine_report, merge_reports
from .scheduler import NOT_SERVED, Scheduler

#: The single-camera node's camera id in the scheduler and its books.
SINGLE_CAMERA = ""

#: Totals over all cameras added to the engine's status when the node serves several cameras.
TOTAL_KEYS = ("received", "processed", "dropped_total", "rejected_total", "in_flight")

#: The lifecycle state in which a managed node serves (``lifecycle_msgs`` labels).
ACTIVE = "active"


@dataclass(frozen=True)
class Status:
    """One status of a diagnostics message: the part of its name after the node's name, the
    report and the hardware id (the engine's device, or a camera's topic)."""

    name_suffix: str
    report: HealthReport
    hardware_id: str


def thresholds(values: Mapping[str, Any]) -> Thresholds:
    return Thresholds(values["latency_warn_ms"], values["latency_error_ms"],
                      values["drop_warn_ratio"], values["drop_error_ratio"])


class HealthReporter:
    """Builds the node's statuses from ``scheduler``; call :meth:`statuses` once per period.

    Each call starts a new period: drop ratios and clock status cover the frames since the
    previous call.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: Per camera: frames received and lost (dropped or rejected) at the previous report.
        self._last_report: dict[str, tuple[int, int]] = {}

    def interval(self, camera: str, books: Mapping[str, Any]) -> tuple[int, int]:
        """Frames of ``camera`` received and lost since the previous call (or since the start),
        leaving out those deliberately not served."""
        not_served = sum(books["dropped"].get(reason, 0) for reason in NOT_SERVED)
        received = books["received"] - not_served
        lost = books["dropped_total"] + books["rejected_total"] - not_served
        previous_received, previous_lost = self._last_report.get(camera, (0, 0))
        self._last_report[camera] = (received, lost)
        return received - previous_received, lost - previous_lost

    def camera(self, camera: str, books: Mapping[str, Any], values: Mapping[str, Any],
               end_to_end: dict[str, float], serving: bool = True) -> HealthReport:
        """One camera's report for the period since the previous one; a camera that is silent
        while the node does not serve (``serving`` False) is not warned about."""
        stats = self.scheduler.camera_stats[camera]
        received, lost = self.interval(camera, books)
        return camera_report(
            end_to_end=end_to_end, accounting=dict(books), interval_received=received, interval_lost=lost,
            input_rate_hz=stats.input_rate.rate(), output_rate_hz=stats.output_rate.rate(),
            thresholds=thresholds(values), silent_s=stats.silent_s(),
            silence_warn_s=values["silence_warn_s"] if serving else 0.0,
            clock_mismatch=self.scheduler.stamp_clocks[camera].period_mismatch(),
        )

    def engine(self) -> HealthReport:
        """The shared engine's report: what runs, stage latencies, failures, loads."""
        scheduler = self.scheduler
        engine = scheduler.engine
        return engine_report(
            stages={stage: w.summary() for stage, w in list(scheduler.stage_latency.items())},
            engine=engine.description if engine else None,
            consecutive_failures=scheduler.failures.consecutive, failure_burst=scheduler.failures.burst(),
            last_error=scheduler.failures.last_error,
            gpu_memory_mb=engine.memory_allocated_mb() if engine else None,
            startup_error=scheduler.startup_error, model_loading=scheduler.loading,
            reload_error=scheduler.reload_error, batch_sizes=scheduler.batch_sizes.summary(),
            parity_fallback=scheduler.parity_fallback,
        )

    def statuses(self, values: Mapping[str, Any], cameras: Sequence[str],
                 topics: Mapping[str, str], state: str | None = None) -> list[Status]:
        """Without ``cameras`` one status (engine and the single camera merged); with them one
        for the shared engine (with totals) plus one per camera (``topics``: each camera's
        subscribed topic, its hardware id). ``state``: a lifecycle node's state (None for a plain
        node), added to every status as ``lifecycle_state``; a status that is OK while the node
        is not active says so in its message."""
        scheduler = self.scheduler
        total, per_camera = scheduler.accounting.snapshots()
        engine = scheduler.engine
        device = str(engine.description["device"]) if engine else ""
        serving = state in (None, ACTIVE)
        if not cameras:
            report = merge_reports(self.engine(), self.camera(SINGLE_CAMERA, total, values,
                                                              scheduler.end_to_end.summary(), serving))
            return _with_state([Status("", report, device)], state)
        engine_part = self.engine()
        engine_part.values["cameras"] = ",".join(cameras)
        for key in TOTAL_KEYS:
            engine_part.values[f"total_frames_{key}"] = str(total[key])
        statuses = [Status(" engine", engine_part, device)]
        for camera in cameras:
            books = per_camera.get(camera) or scheduler.accounting.snapshot(camera)
            report = self.camera(camera, books, values, scheduler.camera_stats[camera].end_to_end.summary(),
                                 serving)
            report.values["image_topic"] = topics[camera]
            statuses.append(Status(f" camera {camera}", report, topics[camera]))
        return _with_state(statuses, state)


def _with_state(statuses: list[Status], state: str | None) -> list[Status]:
    """Each status with the lifecycle ``state`` (unchanged for a plain node, ``state`` None)."""
    if state is None:
        return statuses
    for status in statuses:
        status.report.values["lifecycle_state"] = state
        if state != ACTIVE and status.report.level == OK:
            status.report.message = f"{state}: not serving"
    return statuses
