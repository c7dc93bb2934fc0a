"""The node's health report as plain data: level, message and key/values.

Kept free of ROS so the rules (when is it WARN, when ERROR) are unit-tested directly; the node
only wraps the result in ``diagnostic_msgs/DiagnosticStatus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .stamps import ClockMismatch
from .text import bounded

OK, WARN, ERROR = 0, 1, 2


@dataclass
class Thresholds:
    latency_warn_ms: float = 100.0
    latency_error_ms: float = 500.0
    drop_warn_ratio: float = 0.2
    drop_error_ratio: float = 0.8


@dataclass
class HealthReport:
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _combine(values: dict[str, str], problems: list[tuple[int, str]]) -> HealthReport:
    """Every value and the message are bounded: errors and paths echo user input, and this is
    republished every diagnostics period."""
    values = {key: bounded(value) for key, value in values.items()}
    if not problems:
        return HealthReport(OK, "ok", values)
    level = max(level for level, _ in problems)
    return HealthReport(level, bounded("; ".join(bounded(text) for _, text in problems), 1000), values)


def engine_report(
    *,
    stages: dict[str, dict[str, float]],
    engine: dict[str, Any] | None,
    consecutive_failures: int = 0,
    failure_burst: bool = False,
    last_error: str = "",
    gpu_memory_mb: float | None = None,
    startup_error: str | None = None,
    model_loading: str | None = None,
    reload_error: str | None = None,
    batch_sizes: dict[str, float] | None = None,
    parity_fallback: str | None = None,
) -> HealthReport:
    """The shared engine's status: what runs, per-stage latency, batch sizes and failures.

    ``failure_burst`` (see :class:`~seg_perception.stats.FailureTracker`) is ERROR: the model is
    failing frame after frame. ``reload_error`` is WARN: a requested model change failed, and the
    previous model is still serving. ``parity_fallback`` is WARN: the parity gate refused the
    requested engine at startup (the message has the measured figure) and the fp32 reference serves.
    """
    values: dict[str, str] = {}
    for stage, summary in stages.items():
        for key in ("p50", "p90", "p99", "max"):
            values[f"{stage}_ms_{key}"] = _fmt(summary[key])
    if batch_sizes is not None and batch_sizes.get("count"):
        for key in ("p50", "mean", "max"):
            values[f"batch_size_{key}"] = _fmt(float(batch_sizes[key]))
    values["consecutive_failures"] = str(consecutive_failures)
    if last_error:
        values["last_error"] = last_error
    if model_loading:
        values["model_loading"] = model_loading
    if reload_error:
        values["reload_error"] = reload_error
    if parity_fallback:
        values["parity_fallback"] = parity_fallback
    for key, value in (engine or {}).items():
        values[key] = _fmt(value)
    if gpu_memory_mb is not None:
        values["gpu_memory_mb"] = _fmt(gpu_memory_mb)
    problems: list[tuple[int, str]] = []
    if startup_error:
        problems.append((ERROR, f"model not loaded: {startup_error}"))
    if failure_burst:
        problems.append((ERROR, f"{consecutive_failures} consecutive inference failures ({last_error})"))
    if reload_error:
        problems.append((WARN, f"model reload failed, previous model still serving: {reload_error}"))
    if parity_fallback:
        problems.append((WARN, parity_fallback))
    return _combine(values, problems)


def camera_report(
    *,
    end_to_end: dict[str, float],
    accounting: dict[str, Any],
    interval_received: int,
    interval_lost: int,
    input_rate_hz: float,
    output_rate_hz: float,
    thresholds: Thresholds,
    silent_s: float | None = None,
    silence_warn_s: float = 0.0,
    clock_mismatch: ClockMismatch | None = None,
) -> HealthReport:
    """One camera's status: rates, end-to-end latency, frame books and liveness.

    ``interval_received``/``interval_lost`` are the frames received and dropped-or-rejected since
    the previous report, so the drop level follows the current load rather than history.
    ``silent_s`` is the time since the camera's last frame (None before its first): past
    ``silence_warn_s`` (when > 0) the camera is WARN, "no frames for N s". ``clock_mismatch``
    (the camera's stamps are off the node clock) is WARN with the offset and the fix; latency is
    then measured from arrival, and ``latency_from`` says so.
    """
    values: dict[str, str] = {}
    for key in ("p50", "p90", "p99", "max"):
        values[f"end_to_end_ms_{key}"] = _fmt(end_to_end[key])
    values["input_rate_hz"] = _fmt(input_rate_hz)
    values["output_rate_hz"] = _fmt(output_rate_hz)
    for key in ("received", "processed", "dropped_total", "rejected_total", "in_flight"):
        values[f"frames_{key}"] = str(accounting[key])
    for reason, count in sorted(accounting["dropped"].items()):
        values[f"dropped_{reason}"] = str(count)
    for reason, count in sorted(accounting["rejected"].items()):
        values[f"rejected_{reason}"] = str(count)
    if silent_s is not None:
        values["seconds_since_last_frame"] = _fmt(float(silent_s))
    values["latency_from"] = "stamp" if clock_mismatch is None else "arrival"
    problems: list[tuple[int, str]] = []
    if clock_mismatch is not None:
        values["clock_mismatch"] = clock_mismatch.kind
        if clock_mismatch.offset_s is not None:
            values["clock_offset_s"] = f"{clock_mismatch.offset_s:.3f}"
        values["frames_aged_from_arrival"] = str(clock_mismatch.frames_from_arrival)
        problems.append((WARN, clock_mismatch.message))
    p90 = end_to_end["p90"] if end_to_end.get("count") else 0.0
    if p90 > thresholds.latency_error_ms:
        problems.append((ERROR, f"end-to-end p90 {p90:.1f} ms > {thresholds.latency_error_ms:g} ms"))
    elif p90 > thresholds.latency_warn_ms:
        problems.append((WARN, f"end-to-end p90 {p90:.1f} ms > {thresholds.latency_warn_ms:g} ms"))
    if interval_received:
        ratio = interval_lost / interval_received
        values["drop_ratio"] = _fmt(ratio)
        if ratio >= thresholds.drop_error_ratio:
            problems.append((ERROR, f"{ratio:.0%} of recent frames dropped or rejected"))
        elif ratio >= thresholds.drop_warn_ratio:
            problems.append((WARN, f"{ratio:.0%} of recent frames dropped or rejected"))
    if silence_warn_s > 0 and silent_s is not None and silent_s >= silence_warn_s:
        problems.append((WARN, f"no frames for {silent_s:.0f} s"))
    return _combine(values, problems)


def merge_reports(*parts: HealthReport) -> HealthReport:
    """One status out of several (the single-camera node's engine and camera parts): the values
    of all, the worst level, the problems' messages in the order given."""
    problems = [(part.level, part.message) for part in parts if part.level != OK]
    values: dict[str, str] = {}
    for part in parts:
        values.update(part.values)
    return _combine(values, problems)
