"""Preparing an engine for a batch shape off the hot path, without starving the frames being served.

A compiled or captured engine is fast only for the shapes it has prepared: ``torch.compile``
(``dynamic=False``) traces once per input shape, a CUDA graph is captured once per batch shape and
output request. Preparing takes from a second (capture) to tens of seconds (compile on a CPU), so
it must not happen on the thread that serves frames, and it must not starve that thread either:

* :class:`PreparedCache` keys what has been prepared; a miss schedules the work on a background
  :class:`Preparer` and the caller serves that batch eagerly meanwhile. A failed preparation
  falls back to eager for that key and is retried a bounded number of times, spaced out, never
  on every frame. The cache is bounded (least recently used evicted).
* :data:`CAPTURE_LOCK` serialises every CUDA graph capture and every ``torch.cuda.empty_cache()``
  in the process: ``torch.cuda.graph`` uses one capture stream per process and empties the
  allocator's cache on entry, which asserts while another capture is under way.
* :data:`SERVING` counts host-side serving work in progress (process-wide), and
  :func:`yielding_to_serving` makes preparation pause whenever frames are being served: Python
  threads share one interpreter lock, and a thread tracing a model for ``torch.compile`` would
  otherwise make every one of the serving thread's ~350 operator calls per frame wait for its
  switch interval (seconds per frame). The pause is bounded (``max_wait_s``) so that preparation
  still advances under continuous traffic.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)

#: Held around every CUDA graph capture and every ``torch.cuda.empty_cache()`` in the process.
CAPTURE_LOCK = threading.Lock()

#: How long preparation waits for serving to go idle before it takes a slice anyway.
MAX_YIELD_WAIT_S = 0.05
#: How long preparation then runs before it checks for serving work again.
PREPARE_SLICE_S = 0.002
#: A preparation thread with nothing to do for this long exits (a new one starts on demand).
IDLE_EXIT_S = 10.0


class ServingGate:
    """A count of host-side serving work in progress, which preparation yields to."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = threading.Condition()

    @property
    def busy(self) -> bool:
        return self._busy > 0

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block (releasing the interpreter lock) until nothing is served, or ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


#: Process-wide: every engine's serving counts, whichever engine is being prepared.
SERVING = ServingGate()


@contextlib.contextmanager
def yielding_to_serving(
    gate: ServingGate = SERVING, max_wait_s: float = MAX_YIELD_WAIT_S, slice_s: float = PREPARE_SLICE_S
) -> Iterator[None]:
    """Run the body in short pieces: at Python call boundaries, pause while ``gate`` is busy.

    A profile hook on this thread only (``sys.setprofile``); the serving thread is unaffected.
    After waiting ``max_wait_s`` the body runs for ``slice_s`` before it checks again, so it
    finishes even under continuous serving; it then gets ``slice_s / (slice_s + max_wait_s)`` of
    the interpreter (about 4 %) and the serving thread the rest.
    """
    resume_checks_at = 0.0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal resume_checks_at
        if not gate.busy:
            return
        now = time.monotonic()
        if now < resume_checks_at:
            return
        if not gate.wait_idle(max_wait_s):
            resume_checks_at = time.monotonic() + slice_s

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(previous)


@dataclass
class _Failure:
    attempts: int
    lookups_since: int = 0


class PreparedCache:
    """What has been prepared, by key: captured graphs, or shapes a compiled model has traced.

    ``lookup`` is called by the serving thread for every batch. It returns the prepared value, or
    ``None`` (serve eagerly) after scheduling the preparation with ``schedule``. Values built in
    the background are admitted (and the least recent evicted, after ``before_evict``, which
    waits for frames in flight that may still use them) by the serving thread only, so
    eviction never races a replay.
    """

    def __init__(
        self,
        build: Callable[[Hashable], Any],
        capacity: int,
        *,
        before_evict: Callable[[], None] = lambda: None,
        max_attempts: int = 3,
        retry_after: int = 100,
        what: str = "prepared",
    ) -> None:
        if capacity < 1 or max_attempts < 1:
            raise ValueError("capacity and max_attempts must be positive")
        self._build, self.capacity = build, capacity
        self._before_evict, self.max_attempts, self.retry_after, self.what = (
            before_evict, max_attempts, retry_after, what,
        )
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._ready: dict[Hashable, Any] = {}
        self._building: set[Hashable] = set()
        self._failures: dict[Hashable, _Failure] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return [*self._entries, *self._ready]

    def failures(self) -> dict[Hashable, int]:
        """Failed attempts per key (for diagnostics and tests)."""
        with self._lock:
            return {k: f.attempts for k, f in self._failures.items()}

    def lookup(self, key: Hashable, schedule: Callable[[Callable[[], None]], None] | None) -> Any:
        """The prepared value, or ``None`` after scheduling its preparation (``schedule(job)``);
        ``schedule=None`` prepares in the calling thread before returning."""
        with self._lock:
            if key in self._ready:
                self._admit(key, self._ready.pop(key))
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            if key in self._building or not self._may_attempt(key):
                return None
            self._building.add(key)
        if schedule is not None:
            schedule(functools.partial(self._prepare, key))
            return None
        self._prepare(key)
        with self._lock:
            if key in self._ready:
                self._admit(key, self._ready.pop(key))
            return self._entries.get(key)

    def _may_attempt(self, key: Hashable) -> bool:
        failure = self._failures.get(key)
        if failure is None:
            return True
        failure.lookups_since += 1
        if failure.attempts >= self.max_attempts or failure.lookups_since < self.retry_after:
            return False
        failure.lookups_since = 0
        return True

    def _prepare(self, key: Hashable) -> None:
        try:
            value = self._build(key)
        except Exception as exc:  # a failed preparation serves eagerly instead
            with self._lock:
                failure = self._failures.setdefault(key, _Failure(attempts=0))
                failure.attempts += 1
                self._building.discard(key)
                final = failure.attempts >= self.max_attempts
            LOG.warning(
                "%s for %s failed (attempt %d of %d, serving eagerly%s): %s: %.300s", self.what, key,
                failure.attempts, self.max_attempts, "" if final else f"; retry after {self.retry_after} frames",
                type(exc).__name__, exc, exc_info=final,
            )
            return
        with self._lock:
            self._ready[key] = value
            self._failures.pop(key, None)
            self._building.discard(key)

    def _admit(self, key: Hashable, value: Any) -> None:
        while len(self._entries) >= self.capacity:
            self._before_evict()
            self._entries.popitem(last=False)
        self._entries[key] = value


class Preparer:
    """One background thread per engine that runs preparation jobs in order, yielding to serving."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def schedule(self, job: Callable[[], None]) -> None:
        with self._lock:  # put under the lock: an idle thread decides to exit under it too
            self._pending += 1
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every scheduled job has finished (benchmarks and tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)

    def _run(self) -> None:
        """Run jobs; exit when closed or idle for IDLE_EXIT_S, so that an engine replaced by a
        reload leaves no thread (nor, through a finished job, a reference to itself) behind."""
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            try:
                with yielding_to_serving():
                    job()
            finally:
                job = None
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
