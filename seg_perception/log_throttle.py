"""Rate-limited, bounded log lines for per-frame problems, without ROS.

A camera sending garbage at 30 Hz would otherwise write 30 warnings a second, each echoing the
input. :class:`LogThrottle` passes a warning or error on at most once per ``period_s`` for lines
that start alike (same level, same first characters: the same problem with another frame's
details), and bounds every line. Information lines (model swaps, clock state changes) are rare
and always pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .text import bounded

#: Seconds between two log lines that start alike.
LOG_THROTTLE_S = 5.0
#: Characters of a line that decide whether two lines "start alike".
KEY_CHARS = 24
#: Remembered line starts beyond which those older than the period are forgotten.
MAX_KEYS = 1024


class LogThrottle:
    """``throttle(level, message)``: forwards to ``sink(level, bounded message)`` unless a line of
    the same level that starts alike was forwarded less than ``period_s`` ago (warnings and
    errors only). Thread-safe: the worker, the loader and the executor all log."""

    def __init__(self, sink: Callable[[int, str], None], period_s: float = LOG_THROTTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.period_s, self._clock = sink, period_s, clock
        self._last: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, message: str) -> None:
        message = bounded(message)
        if level >= logging.WARNING:
            key, now = (level, message[:KEY_CHARS]), self._clock()
            with self._lock:
                if now - self._last.get(key, -self.period_s) < self.period_s:
                    return
                if len(self._last) >= MAX_KEYS:
                    self._last = {k: t for k, t in self._last.items() if now - t < self.period_s}
                self._last[key] = now
        self.sink(level, message)
