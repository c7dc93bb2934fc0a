"""The node's health report as plain data: level, message and key/values.

Kept free of ROS so the rules (when is it WARN, when ERROR) are unit-tested directly; the node
only wraps the result in ``diagnostic_msgs/DiagnosticStatus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .text import bounded

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


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


def build_report(
    *,
    stages: dict[str, dict[str, float]],
    end_to_end: dict[str, float],
    accounting: dict[str, Any],
    interval_received: int,
    interval_lost: int,
    input_rate_hz: float,
    output_rate_hz: float,
    engine: dict[str, Any] | None,
    thresholds: Thresholds,
    consecutive_failures: int = 0,
    failure_burst: bool = False,
    last_error: str = "",
    gpu_memory_mb: float | None = None,
    startup_error: str | None = None,
    model_loading: str | None = None,
    reload_error: str | None = None,
) -> HealthReport:
    """Combine the node's statistics into one status.

    ``interval_received``/``interval_lost`` are the frames received and dropped-or-rejected since
    the previous report, so the drop level follows the current load rather than history.
    ``failure_burst`` (see :class:`~seg_perception.stats.FailureTracker`) is ERROR: the model is
    failing frame after frame. ``reload_error`` is WARN: a requested model change failed, and the
    previous model is still serving.
    """
    values: dict[str, str] = {}
    for stage, summary in stages.items():
        for key in ("p50", "p90", "p99", "max"):
            values[f"{stage}_ms_{key}"] = _fmt(summary[key])
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
    values["consecutive_failures"] = str(consecutive_failures)
    if last_error:
        values["last_error"] = last_error
    if model_loading:
        values["model_loading"] = model_loading
    if reload_error:
        values["reload_error"] = reload_error
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
    values = {key: bounded(value) for key, value in values.items()}  # errors echo user input
    if not problems:
        return HealthReport(OK, "ok", values)
    level = max(level for level, _ in problems)
    return HealthReport(level, bounded("; ".join(bounded(text) for _, text in problems), 1000), values)
