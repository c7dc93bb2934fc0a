"""Sliding-window latency statistics, rate meters and frame accounting (ROS-free, thread-safe).

The node records every frame's fate here and the diagnostics publisher reads snapshots, so the
books can be checked: received == processed + dropped + rejected + in flight.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def percentiles(samples: Sequence[float]) -> dict[str, float] | None:
    """p50/p90/p99/mean/max and the count of ``samples``; None when there are none."""
    if len(samples) == 0:
        return None
    arr = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(arr.mean()),
            "max": float(arr.max()), "count": int(arr.size)}


class LatencyWindow:
    """The last ``size`` samples of one latency, in milliseconds."""

    def __init__(self, size: int = 300) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value_ms: float) -> None:
        with self._lock:
            self._samples.append(float(value_ms))

    def summary(self) -> dict[str, float]:
        """p50/p90/p99/max/mean over the window, and the sample count (zeros when empty)."""
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64)
        return percentiles(samples) or dict.fromkeys(("p50", "p90", "p99", "mean", "max", "count"), 0)


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self._window:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-9)
            return (len(self._times) - 1) / span if span < self._window else len(self._times) / self._window


@dataclass
class _Books:
    received: int = 0
    processed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, object]:
        dropped, rejected = dict(self.dropped), dict(self.rejected)
        accounted = self.processed + sum(dropped.values()) + sum(rejected.values())
        return {
            "received": self.received, "processed": self.processed,
            "dropped": dropped, "rejected": rejected,
            "dropped_total": sum(dropped.values()), "rejected_total": sum(rejected.values()),
            "in_flight": self.received - accounted,
        }


class FrameAccounting:
    """Every received frame ends as processed, dropped (with reason) or rejected (with reason).

    Books are kept per camera and in total under one lock, each event updating both, so a
    snapshot of the total is always the exact sum of the cameras' snapshots. The single-camera
    node uses the camera ``""``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = _Books()
        self._cameras: dict[str, _Books] = {}

    def _books(self, camera: str) -> _Books:
        books = self._cameras.get(camera)
        if books is None:
            books = self._cameras[camera] = _Books()
        return books

    @property
    def received(self) -> int:
        return self._total.received

    @property
    def processed(self) -> int:
        return self._total.processed

    def receive(self, camera: str = "") -> None:
        with self._lock:
            self._total.received += 1
            self._books(camera).received += 1

    def process(self, camera: str = "") -> None:
        with self._lock:
            self._total.processed += 1
            self._books(camera).processed += 1

    def drop(self, reason: str, camera: str = "") -> None:
        with self._lock:
            self._total.dropped[reason] += 1
            self._books(camera).dropped[reason] += 1

    def reject(self, reason: str, camera: str = "") -> None:
        with self._lock:
            self._total.rejected[reason] += 1
            self._books(camera).rejected[reason] += 1

    def snapshot(self, camera: str | None = None) -> dict[str, object]:
        """The books of ``camera``, or of all cameras together when None."""
        with self._lock:
            if camera is None:
                return self._total.snapshot()
            return self._cameras.get(camera, _Books()).snapshot()

    def snapshots(self) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
        """The total and every camera's books, taken at one instant (they add up exactly)."""
        with self._lock:
            return self._total.snapshot(), {c: b.snapshot() for c, b in self._cameras.items()}


class FailureTracker:
    """Consecutive inference failures, and whether they form a burst worth an ERROR.

    A burst is ``threshold`` failures in a row (no frame succeeded in between) whose oldest is at
    most ``window_s`` seconds old. A success ends the burst at once; without further failures it
    ages out after ``window_s``, so the node does not report an old incident forever. Only the
    last ``threshold`` failure times are kept.
    """

    def __init__(self, threshold: int = 5, window_s: float = 10.0) -> None:
        self.threshold, self.window_s = threshold, window_s
        self.consecutive = 0
        self.total = 0
        self.last_error = ""
        self._times: deque[float] = deque(maxlen=threshold)
        self._lock = threading.Lock()

    def configure(self, threshold: int, window_s: float) -> None:
        with self._lock:
            self.threshold, self.window_s = threshold, window_s
            self._times = deque(self._times, maxlen=threshold)

    def failure(self, error: str, now: float | None = None) -> None:
        with self._lock:
            self.consecutive += 1
            self.total += 1
            self.last_error = error
            self._times.append(time.monotonic() if now is None else now)

    def success(self) -> None:
        with self._lock:
            self.consecutive = 0
            self._times.clear()

    def burst(self, now: float | None = None) -> bool:
        """True while the last ``threshold`` frames all failed within the last ``window_s``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return (
                self.consecutive >= self.threshold
                and len(self._times) == self.threshold
                and now - self._times[0] <= self.window_s
            )
