"""The Ray runner's dispatch, retries and accounting, on an in-process stand-in for Ray.

The real-Ray tests (test_eval_ray.py) kill a real worker once; this drives every outcome a task
can have, deterministically and in milliseconds: a worker dying once (retried, then ok), dying on
every attempt (failed after the retry budget, with the reason), a bag error (failed at once, not
retried) and an unexpected exception (retried)."""

from __future__ import annotations

import sys
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from seg_perception.evaluation.bag_io import BagError
from seg_perception.evaluation.drives import ray_runner
from seg_perception.evaluation.drives.plan import Task


class _WorkerDies(BaseException):
    """Raised by the fake task to make the fake Ray treat the worker process as killed."""


class _Exceptions:
    class RayError(Exception):
        pass

    class RayActorError(RayError):
        pass

    class GetTimeoutError(RayError):
        pass

    class RayTaskError(RayError):
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause


class _Ref:
    def __init__(self, call: Any) -> None:
        self.call = call


class _Actor:
    def __init__(self, fake: FakeRay, instance: Any) -> None:
        self._fake, self._instance, self.dead = fake, instance, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._instance, name)

        def call(*args: Any) -> Any:
            if self.dead:
                raise _Exceptions.RayActorError("The actor died unexpectedly before finishing this task.")
            try:
                return method(*args)
            except _WorkerDies:
                self.dead = True
                raise _Exceptions.RayActorError("The actor died unexpectedly before finishing this task.") from None
            except Exception as exc:  # Ray wraps every task exception
                raise _Exceptions.RayTaskError(exc) from exc

        return SimpleNamespace(remote=lambda *args: _Ref(lambda: call(*args)))


class FakeRay:
    """Just enough of the ``ray`` module for :func:`ray_runner.run_on_ray`, run in this process."""

    __version__ = "fake"
    exceptions = _Exceptions

    def __init__(self) -> None:
        self.actors: list[_Actor] = []

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0, "node:127.0.0.1": 1.0}

    def remote(self, **_options: Any) -> Any:
        def wrap(cls: type) -> Any:
            def create(*args: Any) -> _Actor:
                actor = _Actor(self, cls(*args))
                self.actors.append(actor)
                return actor
            return SimpleNamespace(remote=create)
        return wrap

    def wait(self, refs: list[_Ref], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref, timeout: float | None = None) -> Any:
        return ref.call()

    def kill(self, actor: Any) -> None:
        pass

    def get_runtime_context(self) -> Any:
        return SimpleNamespace(gcs_address="127.0.0.1:0", get_node_id=lambda: "node")

    def get_gpu_ids(self) -> list:
        return []


def test_every_task_ends_ok_or_failed_with_its_reason_within_the_retry_budget(monkeypatch) -> None:
    calls: Counter = Counter()

    def fake_run_task(engine: Any, task: Task, max_pixels: int, on_frame: Any) -> dict[str, Any]:
        calls[task.task_id] += 1
        attempt = calls[task.task_id]
        if task.task_id == 0 and attempt == 1 or task.task_id == 1:
            raise _WorkerDies()
        if task.task_id == 2:
            raise BagError("bag /d2 is truncated or corrupt")
        if task.task_id == 3 and attempt == 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        for _ in range(task.frames):
            on_frame()
        return {"task_id": task.task_id, "cameras": [], "busy_s": 0.5, "frames": task.frames}

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_runner, "run_task", fake_run_task)
    monkeypatch.setattr(ray_runner, "build_engine", lambda values, seed: SimpleNamespace(description={"model": "m"}))
    tasks = [Task(i, drive=i, path=f"/d{i}", cameras=None, frames=5) for i in range(5)]
    seen: list = []
    outcome = ray_runner.run_on_ray(tasks, {"max_pixels": 100}, ray_runner.RayOptions(workers=2, max_retries=2),
                                    on_progress=seen.append)

    assert set(outcome.results) == {0, 3, 4}
    assert set(outcome.failures) == {1, 2}
    assert set(outcome.results) | set(outcome.failures) == {t.task_id for t in tasks}  # nothing missing
    reason, attempts = outcome.failures[1]
    assert attempts == 3 and calls[1] == 3 and "died" in reason  # 1 try + 2 retries, then failed
    assert len(outcome.retries[1]) == 3
    reason, attempts = outcome.failures[2]
    assert attempts == 1 and calls[2] == 1 and reason.startswith("BagError: bag /d2")  # data error: no retry
    assert outcome.attempts[0] == 2 and "died" in outcome.retries[0][0]
    assert outcome.attempts[3] == 2 and outcome.retries[3] == ["RuntimeError: CUDA error: an illegal memory access"]
    execution = outcome.execution
    deaths = 1 + 3
    assert execution["workers_started"] == 2 + deaths  # each dead worker replaced while tasks remained
    assert sum(w["frames"] for w in execution["per_worker"]) == 15
    assert [w["alive"] for w in execution["per_worker"]].count(False) == deaths
    assert seen[-1].done_frames == 15 and seen[-1].total_frames == 25


def test_workers_stop_being_replaced_when_the_budget_is_spent(monkeypatch) -> None:
    def always_dies(engine: Any, task: Task, max_pixels: int, on_frame: Any) -> dict[str, Any]:
        raise _WorkerDies()

    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    monkeypatch.setattr(ray_runner, "run_task", always_dies)
    monkeypatch.setattr(ray_runner, "build_engine", lambda values, seed: SimpleNamespace(description={}))
    tasks = [Task(i, drive=i, path=f"/d{i}", cameras=None, frames=1) for i in range(6)]
    outcome = ray_runner.run_on_ray(tasks, {"max_pixels": 100}, ray_runner.RayOptions(workers=1, max_retries=0))
    assert not outcome.results and set(outcome.failures) == set(range(6))
    assert outcome.execution["workers_started"] == 2  # 1 + a budget of workers * (1 + max_retries)
    assert any("no worker left" in reason for reason, _ in outcome.failures.values())


def test_workers_without_ray_say_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_runner.RayUnavailable, match=r"pip install 'seg_perception\[cluster\]'"):
        ray_runner.run_on_ray([], {}, ray_runner.RayOptions())
