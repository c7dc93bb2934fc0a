"""Preparation off the hot path: the prepared-cache's scheduling, eviction and retries, and the
profile hook that makes a preparing thread give way to frames being served."""

from __future__ import annotations

import threading

import pytest

from seg_perception.preparation import PreparedCache, Preparer, ServingGate, yielding_to_serving


def test_lookup_schedules_once_and_returns_the_value_when_ready() -> None:
    jobs: list = []
    cache = PreparedCache(lambda key: f"graph{key}", capacity=4)
    assert cache.lookup(1, jobs.append) is None
    assert cache.lookup(1, jobs.append) is None and len(jobs) == 1  # being built: not scheduled again
    jobs.pop()()
    assert cache.lookup(1, jobs.append) == "graph1" and not jobs


def test_capacity_evicts_least_recent_after_waiting_for_frames_in_flight() -> None:
    waits: list[int] = []
    cache = PreparedCache(lambda key: key, capacity=2, before_evict=lambda: waits.append(len(waits)))
    for key in (1, 2, 1, 3):
        cache.lookup(key, None)
    assert sorted(cache.keys()) == [1, 3] and waits == [0]


def test_failures_are_retried_spaced_out_and_bounded() -> None:
    calls: list[int] = []

    def build(key: int) -> int:
        calls.append(key)
        raise RuntimeError("capture failed")

    cache = PreparedCache(build, capacity=2, max_attempts=2, retry_after=5)
    for _ in range(4):
        assert cache.lookup(7, None) is None
    assert calls == [7]
    for _ in range(20):
        assert cache.lookup(7, None) is None
    assert calls == [7, 7] and cache.failures() == {7: 2}


def test_preparation_waits_while_frames_are_served_and_finishes_after() -> None:
    gate = ServingGate()
    waits: list[float] = []
    original = gate.wait_idle

    def recording_wait(timeout: float) -> bool:
        waits.append(timeout)
        return original(timeout)

    gate.wait_idle = recording_wait  # type: ignore[method-assign]
    finished = threading.Event()

    def work() -> None:
        with yielding_to_serving(gate, max_wait_s=0.01, slice_s=0.001):
            total = 0
            for i in range(20000):
                total += abs(i)  # Python calls: where the hook gets its chance to yield
        finished.set()

    with gate.serving():
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(0.2)
    worker.join(60)
    assert finished.is_set()
    assert waits and all(t == pytest.approx(0.01) for t in waits)


def test_no_waiting_when_nothing_is_served() -> None:
    gate = ServingGate()
    gate.wait_idle = lambda timeout: pytest.fail("waited although idle")  # type: ignore[method-assign]
    with yielding_to_serving(gate):
        sum(abs(i) for i in range(1000))


def test_preparer_runs_jobs_in_the_background_and_wait_reports_idle() -> None:
    preparer = Preparer("test-preparer")
    ran: list[str] = []
    release = threading.Event()
    preparer.schedule(lambda: (release.wait(10), ran.append(threading.current_thread().name)))
    assert not preparer.wait(0.05)
    release.set()
    assert preparer.wait(10) and ran == ["test-preparer"]
    preparer.close()


def test_an_idle_preparer_thread_exits_and_restarts_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    import seg_perception.preparation as preparation

    monkeypatch.setattr(preparation, "IDLE_EXIT_S", 0.05)
    preparer = Preparer("test-idle")
    ran: list[int] = []
    preparer.schedule(lambda: ran.append(1))
    first = preparer._thread
    assert first is not None and preparer.wait(10)
    first.join(10)
    assert not first.is_alive() and preparer._thread is None
    preparer.schedule(lambda: ran.append(2))
    assert preparer.wait(10) and ran == [1, 2]
