"""Per-frame problems reach the log at most once per period per kind, bounded; information
lines always pass."""

from __future__ import annotations

import logging

from seg_perception.log_throttle import LogThrottle
from seg_perception.text import TEXT_LIMIT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_alike_warnings_pass_once_per_period_and_others_pass() -> None:
    lines: list[tuple[int, str]] = []
    clock = Clock()
    log = LogThrottle(lambda level, message: lines.append((level, message)), period_s=5.0, clock=clock)
    for i in range(100):
        log(logging.WARNING, f"rejected frame (corrupt) of camera 'a': byte {i}")
    assert len(lines) == 1
    log(logging.ERROR, "rejected frame (corrupt) of camera 'a': byte 0")  # another level
    log(logging.WARNING, "inference failed, frame of camera 'a' dropped")  # another start
    assert len(lines) == 3
    clock.now += 4.9
    log(logging.WARNING, "rejected frame (corrupt) of camera 'a': again")
    assert len(lines) == 3
    clock.now += 0.2
    log(logging.WARNING, "rejected frame (corrupt) of camera 'a': again")
    assert len(lines) == 4
    for _ in range(3):
        log(logging.INFO, "now serving regseg")
    assert len(lines) == 7


def test_lines_are_bounded_and_memory_of_starts_is_bounded() -> None:
    lines: list[tuple[int, str]] = []
    clock = Clock()
    log = LogThrottle(lambda level, message: lines.append((level, message)), period_s=5.0, clock=clock)
    log(logging.INFO, "x" * 100_000)
    assert len(lines[0][1]) <= TEXT_LIMIT
    for i in range(5000):
        clock.now += 0.01
        log(logging.WARNING, f"{i:024d} distinct")
    assert len(lines) == 5001 and len(log._last) <= 1024
