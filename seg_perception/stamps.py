"""Is a frame's header stamp on the node's clock? Decides what a frame's age is measured from.

The node drops frames older than ``max_age_ms`` and reports end-to-end latency, both measured
from the header stamp. That only works when the camera and the node share a clock. Three common
cases break it, and each used to drop every frame of a stream as ``stale`` (or, with stamps in
the future, skip the age check and report negative latencies):

* a recorded bag played with ``ros2 bag play`` keeps the stamps of the drive, hours or years old;
* a hand-made message (``ros2 topic pub``) or a careless driver leaves the stamp at zero;
* a camera whose clock is not synchronised is seconds off, in either direction.

:class:`StampClock` compares each frame's stamp with the node clock at arrival. Within
``limit_s`` the stamp is trusted and the age runs from it; otherwise the frame is *off clock*:
its age runs from its arrival (a steady clock, so it is real processing time), the age check
effectively only bounds the node's own queueing, and the mismatch is reported (state, measured
offset, the likely fix) until stamps come back in range. No age is ever negative.

Pure Python, no ROS: the node feeds it nanoseconds; one instance per input stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: Default ``clock_mismatch_s``: far above any real pipeline delay (a frame that late is useless
#: anyway) and far below the offset of a replayed bag or an unsynchronised clock.
DEFAULT_LIMIT_S = 5.0

#: How to get stamps onto the node clock, per kind of mismatch.
HINTS = {
    "zero_stamp": "the publisher leaves header.stamp at zero; stamp frames with their capture time",
    "node_clock_zero": "the node clock reads zero: use_sim_time is true but nothing publishes /clock "
                       "(play the bag with `ros2 bag play --clock`)",
    "behind": "for a recorded bag run the node with use_sim_time:=true and play it with "
              "`ros2 bag play --clock`; for a live camera synchronise its clock (PTP/chrony)",
    "ahead": "for a recorded bag run the node with use_sim_time:=true and play it with "
             "`ros2 bag play --clock`; for a live camera synchronise its clock (PTP/chrony)",
}


@dataclass(frozen=True)
class Arrival:
    """One frame's stamp, judged at arrival; :meth:`age_ms` says how old it is later on."""

    stamp_ns: int
    #: Node clock (ROS time: sim time under ``use_sim_time``) when the frame arrived.
    received_ns: int
    #: Steady clock when the frame arrived; the age base for off-clock frames.
    received_steady_ns: int
    #: True when the stamp is on the node clock, so ages are measured from it.
    on_clock: bool

    def age_ms(self, now_ns: int, now_steady_ns: int | None = None) -> float:
        """Milliseconds since the stamp (on clock) or since arrival (off clock); never negative.

        A stamp slightly ahead of the node clock (within the limit: clock jitter, or sim time
        that advances in steps) counts as age 0 rather than a negative latency.
        """
        if self.on_clock:
            age_ns = now_ns - self.stamp_ns
        else:
            steady = time.monotonic_ns() if now_steady_ns is None else now_steady_ns
            age_ns = steady - self.received_steady_ns
        return max(0, age_ns) / 1e6


@dataclass(frozen=True)
class ClockMismatch:
    """The current mismatch of one input stream, for diagnostics and logs."""

    #: zero_stamp | node_clock_zero | behind | ahead
    kind: str
    #: Node clock minus stamp at arrival, seconds (positive: the stamp is in the past); None for
    #: zero stamps and a zero node clock, where the difference means nothing.
    offset_s: float | None
    #: Frames whose age was measured from arrival since this stream's first mismatch.
    frames_from_arrival: int

    @property
    def message(self) -> str:
        """One line: what is wrong, what the node does about it, how to fix it."""
        if self.kind == "zero_stamp":
            what = "input frames have a zero header stamp"
        elif self.kind == "node_clock_zero":
            what = "the node clock is zero"
        else:
            what = f"input stamps are {_duration(abs(self.offset_s or 0.0))} {self.kind} the node clock"
        return (f"{what}: age check skipped, latency measured from arrival; fix: {HINTS[self.kind]}")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


class StampClock:
    """Judges each frame's stamp against the node clock and keeps the stream's clock state.

    Thread-safe: subscriptions call :meth:`arrive`, the diagnostics timer :meth:`mismatch`.
    """

    def __init__(self, limit_s: float = DEFAULT_LIMIT_S) -> None:
        self._lock = threading.Lock()
        self._limit_ns = 0
        self.limit_s = limit_s
        self._mismatch: ClockMismatch | None = None
        self._from_arrival = 0
        self._transition: str | None = None
        #: The latest mismatch of a frame since the last :meth:`period_mismatch` call.
        self._period_mismatch: ClockMismatch | None = None

    @property
    def limit_s(self) -> float:
        return self._limit_ns / 1e9

    @limit_s.setter
    def limit_s(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"clock mismatch limit must be > 0 s, got {value}")
        self._limit_ns = int(value * 1e9)

    def arrive(self, stamp_ns: int, received_ns: int, received_steady_ns: int | None = None) -> Arrival:
        """Judge a frame that just arrived (``received_ns``: node clock now) and update the
        stream's state; a state change leaves a line for :meth:`take_transition`."""
        steady = time.monotonic_ns() if received_steady_ns is None else received_steady_ns
        kind = self._judge(stamp_ns, received_ns)
        with self._lock:
            if kind is None:
                if self._mismatch is not None:
                    self._transition = "input stamps are back on the node clock: age check applied again"
                self._mismatch = None
                return Arrival(stamp_ns, received_ns, steady, on_clock=True)
            self._from_arrival += 1
            offset = (received_ns - stamp_ns) / 1e9 if kind in ("behind", "ahead") else None
            previous = self._mismatch
            self._mismatch = self._period_mismatch = ClockMismatch(kind, offset, self._from_arrival)
            if previous is None or previous.kind != kind:
                self._transition = self._mismatch.message
            return Arrival(stamp_ns, received_ns, steady, on_clock=False)

    def _judge(self, stamp_ns: int, received_ns: int) -> str | None:
        """The kind of mismatch, or None when the stamp is on the node clock."""
        if stamp_ns == 0:
            return "zero_stamp"
        if received_ns == 0:
            return "node_clock_zero"
        offset = received_ns - stamp_ns
        if offset > self._limit_ns:
            return "behind"
        if offset < -self._limit_ns:
            return "ahead"
        return None

    def mismatch(self) -> ClockMismatch | None:
        """The stream's state as of its latest frame: None while its stamps are on the clock."""
        with self._lock:
            return self._mismatch

    def period_mismatch(self) -> ClockMismatch | None:
        """The state to report for the period since the previous call, and a new period starts.

        The current mismatch when there is one; else, when some frame of the period was off the
        clock (stamps that are on and off it by turns), the latest mismatch of the period; None
        only when every frame of the period was on the clock. A diagnostics report covers its
        whole period this way, not only the frame that happened to come last.
        """
        with self._lock:
            seen, self._period_mismatch = self._period_mismatch, None
            return self._mismatch or seen

    def take_transition(self) -> str | None:
        """A line to log when the state changed since the last call (entered, changed kind, or
        cleared), else None; so a stream out of sync is logged once, not per frame."""
        with self._lock:
            line, self._transition = self._transition, None
            return line
