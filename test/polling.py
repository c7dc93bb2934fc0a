"""Waiting for a condition in tests, without ROS (the ROS harness re-exports it)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """True as soon as ``predicate()`` is, False when it still is not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Fail the test when ``predicate()`` does not become true within ``timeout`` seconds."""
    assert wait_for(predicate, timeout, 0.01), "timed out"
